"""Cross-process file locks with a bound on the wait: one store's concurrent pipelines taking
the same step, and registrations or A/B promotions of the same model on one machine."""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mlpipe.errors import StorageError

# Where the locks live.
LOCK_DIR = Path(tempfile.gettempdir()) / "mlpipe-locks"

# A lock held this briefly is not worth a line: parallel sweep jobs looking up the same cached step.
QUIET_WAIT_S = 2.0


@contextmanager
def bounded_lock(path, timeout: float, holder: str, key: str, consequence: str):
    """A file lock waited for at most `timeout` seconds (the config `key`); then a StorageError
    that names who holds it, the key and what was (not) done."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    quiet = min(QUIET_WAIT_S, timeout)
    try:
        try:
            lock.acquire(timeout=quiet)
        except Timeout:  # said once, so that a wait is never silent
            print(f"[mlpipe] waiting for {holder} to finish (lock {path}; at most {timeout:g} s: {key})",
                  file=sys.stderr, flush=True)
            lock.acquire(timeout=timeout - quiet)
    except Timeout:
        raise StorageError(f"{holder} has held {path} for over {timeout:g} s ({key}); {consequence}. "
                           f"Raise {key} if it is still working") from None
    try:
        yield
    finally:
        lock.release()
