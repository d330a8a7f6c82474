"""mlpipe/run/locks.py: a file lock held by another process is waited for within its bound."""

from __future__ import annotations

import pytest

from mlpipe.run import locks


def hold_lock(path, seconds: float):
    """Another process that holds the file lock at `path` for `seconds` (returned once it holds it)."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; import time\n"
                               f"with FileLock({str(path)!r}):\n    print('held', flush=True); time.sleep({seconds})"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_held_elsewhere_is_waited_for_within_its_bound_then_named(tmp_path, capsys):
    """Another process holds the lock: the wait ends after `timeout` with a StorageError naming
    the holder, the config key and what was not done; once it is free the lock is taken."""
    import time

    from mlpipe.errors import StorageError

    path = tmp_path / "step.lock"
    holder = hold_lock(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            with locks.bounded_lock(path, 0.5, "another pipeline running step train", "main.step_lock_timeout_s",
                                    "step train did not run"):
                pass
        assert 0.5 <= time.monotonic() - started < 5
        assert str(info.value) == (f"another pipeline running step train has held {path} for over 0.5 s "
                                   "(main.step_lock_timeout_s); step train did not run. Raise "
                                   "main.step_lock_timeout_s if it is still working")
        # the wait was said before it began
        assert capsys.readouterr().err == (f"[mlpipe] waiting for another pipeline running step train to finish "
                                           f"(lock {path}; at most 0.5 s: main.step_lock_timeout_s)\n")
    finally:
        holder.kill()
        holder.wait()
    with locks.bounded_lock(path, 5, "x", "main.step_lock_timeout_s", "y"):
        pass


def test_a_lock_held_briefly_is_waited_for_without_a_line(tmp_path, capsys):
    """Parallel sweep jobs take the same step's lock for a cache lookup: no line for that."""
    path = tmp_path / "step.lock"
    holder = hold_lock(path, 0.5)
    try:
        with locks.bounded_lock(path, 60, "another pipeline running step train", "main.step_lock_timeout_s",
                                "step train did not run"):
            assert holder.poll() is not None or holder.wait(5) == 0  # we hold it only after it let go
        assert capsys.readouterr().err == ""
    finally:
        holder.kill()
        holder.wait()
