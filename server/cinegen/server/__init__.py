"""The cinegen generation server: gRPC service, jobs, model registry, pipelines, diffusion blocks."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cinegen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
