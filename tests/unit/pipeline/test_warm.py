"""The warm helper with real processes: a helper serving a probe module, launchers started as
subprocesses (`warm.launch`, what `python -m steps.<step>` runs), real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlpipe.config import PROJECT_ROOT
from mlpipe.pipeline import warm
from mlpipe.pipeline.warm import child, launcher as warm_launcher
from mlpipe.pipeline.warm.helper import Helper
from mlpipe.run import processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm helper is Linux-only")

PROBE = textwrap.dedent("""
    import json, os, sys, threading, time
    from pathlib import Path

    def main(args):
        what = args[0]
        if what == "exit":
            sys.exit(int(args[1]))
        if what == "message":
            sys.exit("a message for stderr")
        if what == "raise":
            raise RuntimeError("boom in the probe")
        if what == "report":
            import mlflow
            from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry
            from mlpipe.run import processes
            print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": os.environ.get("PROBE_VALUE"),
                              "socket_env": os.environ.get("MLPIPE_WARM_SOCKET"), "pid": os.getpid(),
                              "ppid": os.getppid(), "pgid": os.getpgrp(), "warm_parent": processes.WARM_PARENT,
                              "threads": sorted(t.name for t in threading.enumerate()),
                              "active_run": mlflow.active_run() is not None,
                              "stores": TrackingStoreRegistry._get_store_with_resolved_uri.cache_info().currsize,
                              "main": __name__}))
            print("to stderr", file=sys.stderr)
            return
        if what == "sleep":
            Path(args[1]).write_text(str(os.getpid()))
            time.sleep(60)
        if what == "stubborn":  # ignores SIGTERM: only the SIGKILL after main.stop_grace_s ends it
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            Path(args[1]).write_text(str(os.getpid()))
            time.sleep(60)
        if what == "wait":  # until the file `go` appears, then exit with args[2]
            Path(args[1]).write_text(str(os.getpid()))
            while not Path(args[1] + ".go").exists():
                time.sleep(0.05)
            sys.exit(int(args[2]))

    if __name__ == "__main__":
        main(sys.argv[1:])
""")


def start_helper(folder: Path):
    """A helper serving `warm_probe` (from `folder`), stopped by PID afterwards."""
    (folder / "warm_probe.py").write_text(PROBE)
    path = str(folder / "helper.sock")
    # what the driver hands its steps: main.stop_grace_s (short here)
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{PROJECT_ROOT}", processes.STOP_GRACE_ENV: "1"}
    env.pop(warm.SOCKET_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", warm.HELPER_MODULE, path, "warm_probe"], cwd=PROJECT_ROOT,
                            env=env, stdin=subprocess.DEVNULL, process_group=0)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    yield proc, path, env
    processes.stop_group(proc.pid, 5)


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    """One helper for the tests that leave it alive (its imports take seconds)."""
    yield from start_helper(tmp_path_factory.mktemp("warm"))


@pytest.fixture
def own_helper(tmp_path):
    yield from start_helper(tmp_path)


def launcher(path: str, env: dict, *args: str, cwd=None, **kw) -> subprocess.Popen:
    code = (f"from mlpipe.pipeline.warm import launcher; "
            f"launcher.finish(launcher.launch({path!r}, 'warm_probe', {list(args)!r}))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd or PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_child_runs_the_module_with_the_launchers_argv_cwd_env_and_streams(helper, tmp_path):
    proc, path, env = helper
    run = launcher(path, {**env, "PROBE_VALUE": "from the launcher"}, "report", "--flag=1", cwd=tmp_path)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["argv"] == ["report", "--flag=1"] and seen["main"] == "__main__"
    assert seen["cwd"] == str(tmp_path) and seen["env"] == "from the launcher"
    assert "to stderr" in err
    assert seen["pid"] != run.pid and seen["ppid"] == proc.pid  # a fork of the helper...
    assert seen["warm_parent"] == os.getpid()  # ...standing in for the launcher, whose parent we are
    assert seen["pgid"] == os.getpgrp()  # in the launcher's process group: Ctrl-C reaches it
    assert seen["socket_env"] is None


def test_the_child_is_clean_one_thread_no_run_no_store(helper):
    _, path, env = helper
    out, err = launcher(path, env, "report").communicate(timeout=60)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["threads"] == ["MainThread", "mlpipe-warm-launcher"], seen["threads"]
    assert seen["active_run"] is False and seen["stores"] == 0


@pytest.mark.parametrize(("args", "code", "stderr"), [
    (["exit", "0"], 0, ""),
    (["exit", "3"], 3, ""),
    (["message"], 1, "a message for stderr"),
    (["raise"], 1, "RuntimeError: boom in the probe"),
])
def test_exit_codes_and_tracebacks_are_those_of_python(helper, args, code, stderr):
    _, path, env = helper
    run = launcher(path, env, *args)
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err
    assert stderr in err
    if args[0] == "raise":
        assert "Traceback (most recent call last)" in err


def start_step(path: str, env: dict, folder: Path, *args: str) -> tuple[subprocess.Popen, psutil.Process]:
    """A launcher of the probe (`sleep` unless told), and its child once it runs."""
    pid_file = folder / "child.pid"
    run = launcher(path, env, args[0] if args else "sleep", str(pid_file), *args[1:])
    wait_for(lambda: pid_file.exists() and pid_file.read_text() or run.poll() is not None)
    assert run.poll() is None, run.communicate()
    return run, psutil.Process(int(pid_file.read_text()))


def test_sigkill_of_the_launcher_ends_its_child(helper, tmp_path):
    _, path, env = helper
    run, child = start_step(path, env, tmp_path)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    child.wait(timeout=10)  # SIGTERM from the launcher's closed connection


def test_a_child_that_ignores_sigterm_is_killed_stop_grace_s_after_its_launcher_died(helper, tmp_path):
    _, path, env = helper
    run, child = start_step(path, env, tmp_path, "stubborn")
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=10)
    started = time.monotonic()
    child.wait(timeout=20)  # SIGTERM (ignored), then SIGKILL main.stop_grace_s (1 s) later
    assert 0.5 < time.monotonic() - started < 15


def test_sigterm_of_the_launcher_goes_to_the_child_and_comes_back_as_its_status(helper, tmp_path):
    _, path, env = helper
    run, child = start_step(path, env, tmp_path)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=10) == -signal.SIGTERM
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_killed_child_fails_only_its_own_launch(helper, tmp_path):
    proc, path, env = helper
    run, child = start_step(path, env, tmp_path)
    child.send_signal(signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL
    after = launcher(path, env, "exit", "0")
    assert after.wait(timeout=60) == 0 and proc.poll() is None


def test_a_helper_killed_mid_step_leaves_the_step_running_and_its_status_arrives(own_helper, tmp_path):
    proc, path, env = own_helper
    run, child = start_step(path, env, tmp_path, "wait", "4")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert child.is_running()
    Path(f"{tmp_path / 'child.pid'}.go").touch()
    assert run.wait(timeout=30) == 4  # from the child itself: nobody is left to reap it and say


def test_a_step_and_its_helper_both_gone_without_a_status_is_a_failure(own_helper, tmp_path):
    proc, path, env = own_helper
    run, child = start_step(path, env, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    child.send_signal(signal.SIGTERM)  # its default action: no status sent by the child
    _, err = run.communicate(timeout=10)
    assert run.returncode == 1 and "ended without reporting an exit status" in err


def test_no_helper_or_a_refusal_is_a_fallback_not_a_failure(helper, tmp_path):
    _, path, env = helper
    with pytest.raises(warm_launcher.Fallback, match="cannot connect"):
        warm_launcher.launch(str(tmp_path / "missing.sock"), "warm_probe", [])
    with pytest.raises(warm_launcher.Fallback, match="it serves warm_probe"):
        warm_launcher.launch(path, "steps.train", [])


def test_the_helper_forks_only_from_one_thread(tmp_path):
    # In a fresh interpreter: this one may hold other threads (stop_with_parent's watcher, when
    # pytest's parent is a shell), and a helper with any would rightly refuse.
    fresh = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from mlpipe.pipeline import warm
        from mlpipe.pipeline.warm.helper import Helper
        helper = Helper({str(tmp_path / "fresh.sock")!r}, ["warm_probe"])
        print(helper.refusal({{"module": "warm_probe", "prefix": sys.prefix, "root": warm.project_root()}}))
        """)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert fresh.stdout.strip() == "None", fresh.stderr[-2000:]
    helper = Helper(str(tmp_path / "h.sock"), ["warm_probe"])
    request = {"module": "warm_probe", "prefix": sys.prefix, "root": warm.project_root()}
    assert "Python environment" in helper.refusal({**request, "prefix": "/elsewhere"})
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert "forks only from one" in helper.refusal(request)
    finally:
        release.set()
        thread.join()
    helper.listener.close()


def test_hand_off_only_for_step_modules_and_the_switch_in_the_drivers_overrides():
    assert warm_launcher.target(["python", "-m", "steps.train", "--overrides=x"]) == "steps.train"
    assert warm_launcher.target(["python", "-X", "importtime", "-m", "steps.qa"]) == "steps.qa"
    assert warm_launcher.target(["python", "-m", "pytest", "-m", "steps.x"]) is None
    assert warm_launcher.target(["python", "script.py"]) is None
    assert warm_launcher.turned_off(["--steps=all", "--overrides=data=iris main.warm_steps=false"])
    assert warm_launcher.turned_off(["--overrides=main.warm_steps=False"])
    assert not warm_launcher.turned_off(["--overrides=main.warm_steps=true"])
    assert not warm_launcher.turned_off(["--overrides=x.main.warm_steps_old=false"])


def test_one_step_starts_no_helper_early():
    """`-P steps=train`: its own process imports what the helper would (run_job keeps to that
    for a selection in the overrides too)."""
    assert warm_launcher.one_step(["--steps=ingest", "--overrides="])
    assert warm_launcher.one_step(["'--steps=qa'"])  # as MLflow's Kubernetes backend quotes it
    assert not warm_launcher.one_step(["--steps=all", "--overrides="])
    assert not warm_launcher.one_step(["--steps=ingest,preprocess"])
    assert not warm_launcher.one_step(["--overrides=main.steps=[qa]"])  # the config decides, in run_job


def test_exit_code_follows_sys_exit():
    assert child.exit_code(None) == 0 and child.exit_code(5) == 5 and child.exit_code(256 + 2) == 2
