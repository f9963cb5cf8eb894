"""Jobs: the queue with its GPU worker and event logs (queue), the SQLite journal that survives
restarts (journal), and the executors that run one job (executor)."""
from .executor import EventSink, Executor, InProcessExecutor
from .journal import Journal, JournaledJob
from .queue import POSITION_REPORTS, TERMINAL, Job, JobManager

__all__ = ["EventSink", "Executor", "InProcessExecutor", "Journal", "JournaledJob", "POSITION_REPORTS", "TERMINAL",
           "Job", "JobManager"]
