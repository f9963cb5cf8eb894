"""The state folder's lock (jobs/state_lock.py): refused only for a real second holder, freed on every exit."""
from __future__ import annotations

import errno
import logging

import pytest

from cinegen.server.jobs import state_lock
from cinegen.server.jobs.state_lock import StateLock

pytestmark = pytest.mark.skipif(state_lock.fcntl is None, reason="no OS file lock on this platform")


def test_a_folder_that_cannot_be_locked_is_no_second_server(tmp_path, monkeypatch, caplog):
    """NFS without a lock manager answers flock with ENOLCK: the server used to refuse to start, saying another
    server used the folder when none did."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(state_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger=state_lock.__name__):
        lock = StateLock(tmp_path)
    lock.release()
    assert "cannot be locked (No locks available)" in caplog.text


def test_a_server_that_fails_to_start_frees_its_state_folder(registry, tmp_path):
    """A journal that would not open left the folder locked by this very process: every later server in it
    (a retry after fixing the folder) was refused as 'another cinegen server'."""
    from cinegen.server.service import JOURNAL_FILE, GeneratorService, ServerConfig

    config = ServerConfig(port=0, use_hf_cache=False, state_dir=tmp_path)
    (tmp_path / JOURNAL_FILE).mkdir()  # not a database: the journal cannot open
    with pytest.raises(Exception) as failed:
        GeneratorService(config, registry=registry)
    assert not isinstance(failed.value, SystemExit), failed.value
    (tmp_path / JOURNAL_FILE).rmdir()
    GeneratorService(config, registry=registry).close()  # was SystemExit: "Another cinegen server (process …)"
