"""Debian's headless Chromium for tests of generated HTML reports: the DOM after scripts ran,
a screenshot, and how blank a screenshot is, of a file or of an http(s) URL; and `tab()`, one tab
driven over the DevTools protocol, for what `--dump-dom` cannot see: the documents of the page's
iframes (MLflow's artifact viewer shows an HTML artifact in a sandboxed `blob:` iframe).

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
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

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


def _url(where: Path | str) -> str:
    """An http(s) URL as it is; a file as its file:// URI (it must exist: chromium would render its
    own error page for a missing one and exit 0)."""
    if isinstance(where, str) and where.startswith(("http://", "https://")):
        return where
    path = Path(where).resolve()
    if not path.is_file():
        raise AssertionError(f"no such file: {path}")
    return path.as_uri()


def _browse(html: Path | str, args: list[str], timeout: float) -> tuple[str, str]:
    exe = chromium()
    if exe is None:
        raise AssertionError(f"chromium is unavailable: {_reason}")
    url = _url(html)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args, url]
        try:
            code, out, err = _run(cmd, timeout, marker=profile)
        except _Timeout as exc:
            raise AssertionError(f"{' '.join(cmd)}\n{exc}") from None
    if code != 0:
        raise AssertionError(f"chromium exited {code} for {url}:\n{err[-4000:]}")
    return out, err


def dump_dom(html: Path | str, timeout: float = 60, budget_ms: int | None = None) -> str:
    """The serialized DOM of `html` (a file or an http(s) URL) after its scripts ran (`--dump-dom`:
    at the load event; pass `budget_ms` (`--virtual-time-budget`) for pages that render from
    timers). The DOM of the top document only: see `tab()` for an iframe's."""
    extra = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    out, err = _browse(html, [*extra, "--dump-dom"], timeout)
    if "<html" not in out.lower():
        raise AssertionError(f"chromium printed no DOM for {html}:\nstdout: {out[:1000]}\nstderr: {err[-4000:]}")
    return out


def screenshot(html: Path | str, png: Path, size: tuple[int, int] = (1400, 1000), timeout: float = 60,
               budget_ms: int | None = None) -> Path:
    """A PNG screenshot of `html` (a file or an http(s) URL) in a `size` window, written to `png`
    (returned)."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    extra = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    _, err = _browse(html, [*extra, f"--screenshot={png}", f"--window-size={size[0]},{size[1]}"], timeout)
    if not png.exists() or png.stat().st_size == 0:
        raise AssertionError(f"chromium wrote no screenshot {png} for {html}:\n{err[-4000:]}")
    return png


class Tab:
    """One tab of a Chromium driven over the DevTools protocol through a pipe (messages are JSON,
    each ended by a NUL byte). `frame=` names an iframe by the start of its URL: out-of-process
    iframes only (Chromium puts a sandboxed or cross-site iframe in a process of its own, as
    `tab()` asks it to); their documents are out of reach of the page's scripts and of --dump-dom."""

    def __init__(self, proc: subprocess.Popen, to_chromium: int, from_chromium: int, stderr):
        self.proc, self._out, self._in, self._stderr = proc, to_chromium, from_chromium, stderr
        self._buffer, self._id = b"", 0
        self.session = ""  # the page's session: set by tab()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        """Send one command and return its result (events that arrive meanwhile are dropped)."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._in], [], [], left)[0]:
                    raise AssertionError(f"chromium did not answer {method} within {timeout:g} s")
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    self._stderr.seek(0)
                    raise AssertionError(f"chromium closed the DevTools pipe during {method} (exit code "
                                         f"{self.proc.poll()}); stderr:\n{self._stderr.read().decode(errors='replace')[-4000:]}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def frames(self) -> list[str]:
        """The URLs of the out-of-process iframes, in Chromium's order."""
        return [t["url"] for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "iframe"]

    def evaluate(self, expression: str, frame: str | None = None) -> Any:
        """The JSON value of `expression` in the page, or in the first iframe whose URL starts with
        `frame` (AssertionError when there is none)."""
        if frame is None:
            return self._evaluate(expression, self.session)
        targets = [t for t in self.call("Target.getTargets")["targetInfos"]
                   if t["type"] == "iframe" and t["url"].startswith(frame)]
        if not targets:
            raise AssertionError(f"no iframe at {frame}...; iframes: {self.frames()}")
        session = self.call("Target.attachToTarget", {"targetId": targets[0]["targetId"], "flatten": True})["sessionId"]
        try:
            return self._evaluate(expression, session)
        finally:
            self.call("Target.detachFromTarget", {"sessionId": session})

    def _evaluate(self, expression: str, session: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           session=session)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"{expression!r} threw: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, frame: str | None = None, timeout: float = 30) -> Any:
        """The first truthy value of `expression` (in the page or in `frame`, which may not exist
        yet), polled until `timeout` seconds have passed; AssertionError with the last value then.
        Values cross as JSON: an element arrives as {}, which is false here (test `!!element`)."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            try:
                last = self.evaluate(expression, frame)
                if last:
                    return last
            except AssertionError as exc:  # no such frame yet, or a page still loading
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} in {frame or 'the page'} still {last!r} after {timeout:g} s; "
                                     f"page at {self.evaluate('location.href')}, iframes {self.frames()}")
            time.sleep(0.2)


_EXEC_WITH_PIPE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                   "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execv(sys.argv[3], sys.argv[3:])")


def _above_9(fd: int) -> int:
    """`fd` moved to a number above 9 (close-on-exec, as Python makes them)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


@contextmanager
def tab(url: Path | str, headers: dict[str, str] | None = None, size: tuple[int, int] = (1400, 1000),
        timeout: float = 120) -> Iterator[Tab]:
    """A Chromium tab that opened `url` (a file or an http(s) URL), sending `headers` with every
    request (e.g. `Authorization` for a server with basic auth). It does not wait for the page:
    `wait_for` what the test needs. The browser, its helpers and its profile are gone afterwards.
    `timeout` bounds the browser's life."""
    exe = chromium()
    if exe is None:
        raise AssertionError(f"chromium is unavailable: {_reason}")
    url = _url(url)
    with ExitStack() as stack:
        profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="chromium-profile-"))
        # The browser reads commands from its fd 3 and writes replies to its fd 4. A small Python
        # process puts the pipe ends there and execs it (preexec_fn is unsafe in a threaded
        # process); the ends are moved above 9 first, so that moving one cannot close the other.
        to_read, to_write, from_read, from_write = (_above_9(fd) for fd in (*os.pipe(), *os.pipe()))
        cmd = [sys.executable, "-c", _EXEC_WITH_PIPE, str(to_read), str(from_write), exe, *FLAGS,
               f"--user-data-dir={profile}", "--remote-debugging-pipe", "--site-per-process",
               "--enable-features=IsolateSandboxedIframes", f"--window-size={size[0]},{size[1]}", "about:blank"]
        err = stack.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(to_read, from_write), start_new_session=True)
        os.close(to_read)
        os.close(from_write)
        killer = threading.Timer(timeout, _kill_group, (proc, 0.5))
        killer.start()
        try:
            browser = Tab(proc, to_write, from_read, err)
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            browser.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            if headers:
                browser.call("Network.enable", session=browser.session)
                browser.call("Network.setExtraHTTPHeaders", {"headers": headers}, session=browser.session)
            navigation = browser.call("Page.navigate", {"url": url}, session=browser.session)
            if navigation.get("errorText"):
                raise AssertionError(f"chromium could not open {url}: {navigation['errorText']}")
            yield browser
        finally:
            killer.cancel()
            os.close(to_write)
            os.close(from_read)
            _kill_group(proc, grace=0.5)
            _kill_naming(profile)


def blank_fraction(png: Path) -> float:
    """Fraction of pixels equal to the most common colour: near 1.0 means a blank page."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        total = rgb.width * rgb.height
        colors = rgb.getcolors(maxcolors=total)
    return max(count for count, _ in colors) / total
