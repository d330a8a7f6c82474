"""Debian's headless Chromium for tests of generated HTML reports: the DOM after scripts ran,
a screenshot, and how blank a screenshot is.

`chromium()` finds /usr/bin/chromium, or installs it as root with apt (`apt-get install -y
--no-install-recommends chromium`; `apt-get update` only when that fails), under a file lock so
pytest-xdist workers do not run apt at once. `unavailable()` gives the reason for `pytest.skip`.
Playwright's browser download does not work here, hence the plain command line.

Every Chromium call runs in its own session (process group) with its own temporary
`--user-data-dir`, a timeout, and the whole group (and anything still naming that profile
directory) is killed afterwards. Chromium prints harmless warnings on stderr (dbus, GPU, ...):
success is judged by the exit code and the output only."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# apt: the install normally takes well under 2 minutes; `update` only when the lists are stale.
INSTALL_TIMEOUT = 420
UPDATE_TIMEOUT = 180
LOCK_WAIT = INSTALL_TIMEOUT * 2 + UPDATE_TIMEOUT + 60
# A failed install is remembered this long (in the lock file), so each xdist worker does not retry it.
FAILURE_MEMORY = 1800
LOCK_FILE = Path(tempfile.gettempdir()) / "mlpipe-tests-chromium-apt.lock"

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
    "--password-store=basic", "--use-mock-keychain",
]

_found: str | None = None
_reason: str | None = None  # why chromium cannot be had; set once chromium() gave up

# (command, exit code or "timeout", seconds) of every apt call this process made: for reports.
apt_log: list[tuple[str, object, float]] = []


class _Timeout(Exception):
    pass


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGTERM:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _kill_naming(marker: str) -> None:
    """SIGKILL any process whose command line contains `marker` (a unique temp dir): Chromium
    helpers that left the process group."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def _run(cmd: list[str], timeout: float, env: dict | None = None, marker: str | None = None,
         grace: float = 3.0) -> tuple[int, str, str]:
    """Run `cmd` in a new session; stdout/stderr go to files (a lingering helper that holds a pipe
    cannot stall us). Raises _Timeout after killing the group; the group is killed in any case."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, grace)
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise _Timeout(f"{cmd[0]} timed out after {timeout:g} s; stderr:\n{tail}") from None
        finally:
            if proc.returncode is None:
                _kill_group(proc, grace=0.5)
            else:
                _reap(proc)
            if marker:
                _kill_naming(marker)
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def _reap(proc: subprocess.Popen) -> None:
    """The main process exited: kill what is left of its group (zygotes, crashpad handler)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _which() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _apt(args: list[str], timeout: float) -> tuple[int | str, str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for dpkg's own lock (another apt outside this test run) instead of failing at once.
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=120", *args]
    start = time.monotonic()
    try:
        code, out, err = _run(cmd, timeout, env=env, grace=10)
    except _Timeout as exc:
        apt_log.append((" ".join(args), "timeout", time.monotonic() - start))
        return "timeout", str(exc)
    apt_log.append((" ".join(args), code, time.monotonic() - start))
    return code, (out + err)[-2000:]


def _install() -> str | None:
    """Install chromium with apt; None on success, else why not."""
    install = ["install", "-y", "--no-install-recommends", "chromium"]
    code, output = _apt(install, INSTALL_TIMEOUT)
    if code == "timeout":
        return f"apt-get install chromium: {output}"
    if code != 0 or _which() is None:
        # Stale package lists (404 for an old version) are the usual cause: update once, retry.
        ucode, uoutput = _apt(["update"], UPDATE_TIMEOUT)
        if ucode != 0:
            return f"apt-get install chromium failed ({code}), then apt-get update failed ({ucode}): {uoutput}"
        code, output = _apt(install, INSTALL_TIMEOUT)
        if code != 0:
            return f"apt-get install chromium failed ({code}) after apt-get update: {output}"
    return None if _which() else "apt-get install chromium succeeded but no chromium on PATH"


def _install_locked() -> str | None:
    """_install() under a file lock shared by all processes on this machine; None on success."""
    deadline = time.monotonic() + LOCK_WAIT
    with open(LOCK_FILE, "a+") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return f"another process held {LOCK_FILE} (installing chromium) for over {LOCK_WAIT} s"
                time.sleep(1)
        try:
            if _which():  # installed by another worker while we waited
                return None
            lock.seek(0)
            stamp, _, previous = lock.read().partition("\n")
            if stamp.strip().replace(".", "", 1).isdigit() and time.time() - float(stamp) < FAILURE_MEMORY:
                return f"(earlier attempt) {previous}"
            reason = _install()
            lock.seek(0)
            lock.truncate()
            if reason:
                lock.write(f"{time.time()}\n{reason}")
            lock.flush()
            return reason
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def chromium() -> str | None:
    """Path of chromium; installs it (root + apt-get) when missing. None when it cannot be had."""
    global _found, _reason
    if _found or _reason:
        return _found
    path = _which()
    if path is None:
        if os.geteuid() != 0:
            _reason = "no chromium, and installing it needs root (apt-get install chromium)"
        elif shutil.which("apt-get") is None:
            _reason = "no chromium, and no apt-get to install it"
        else:
            _reason = _install_locked()
            path = None if _reason else _which()
    if path:
        # It must start: a broken install (missing libraries) is a skip reason, not a test failure.
        with tempfile.TemporaryDirectory(prefix="chromium-probe-") as profile:
            try:
                code, out, err = _run([path, f"--user-data-dir={profile}", "--version"], 60, marker=profile)
            except _Timeout as exc:
                code, out, err = -1, "", str(exc)
        if code != 0 or "chrom" not in out.lower():
            _reason = f"{path} --version failed ({code}): {(out + err)[-1000:]}"
            path = None
    _found = path
    return path


def unavailable() -> str | None:
    """None when chromium can be used, else the reason (for `pytest.skip(reason)`)."""
    return None if chromium() else (_reason or "no chromium")


def _browse(html: Path, args: list[str], timeout: float) -> tuple[str, str]:
    exe = chromium()
    if exe is None:
        raise AssertionError(f"chromium is unavailable: {_reason}")
    html = Path(html).resolve()
    if not html.is_file():  # chromium would render its own error page and exit 0
        raise AssertionError(f"no such file: {html}")
    url = html.as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args, url]
        try:
            code, out, err = _run(cmd, timeout, marker=profile)
        except _Timeout as exc:
            raise AssertionError(f"{' '.join(cmd)}\n{exc}") from None
    if code != 0:
        raise AssertionError(f"chromium exited {code} for {url}:\n{err[-4000:]}")
    return out, err


def dump_dom(html: Path, timeout: float = 60, budget_ms: int | None = None) -> str:
    """The serialized DOM of `html` after its scripts ran (`--dump-dom`: at the load event; pass
    `budget_ms` (`--virtual-time-budget`) for pages that render from timers)."""
    extra = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    out, err = _browse(html, [*extra, "--dump-dom"], timeout)
    if "<html" not in out.lower():
        raise AssertionError(f"chromium printed no DOM for {html}:\nstdout: {out[:1000]}\nstderr: {err[-4000:]}")
    return out


def screenshot(html: Path, png: Path, size: tuple[int, int] = (1400, 1000), timeout: float = 60,
               budget_ms: int | None = None) -> Path:
    """A PNG screenshot of `html` in a `size` window, written to `png` (returned)."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    extra = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    _, err = _browse(html, [*extra, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}"], timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot {png} for {html}:\n{err[-4000:]}")
    return png


def blank_fraction(png: Path) -> float:
    """Fraction of pixels equal to the most common colour: near 1.0 means a blank page."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        total = rgb.width * rgb.height
        colors = rgb.getcolors(maxcolors=total)
    return max(count for count, _ in colors) / total
