"""`python -m mlpipe.loop --every 300 [--ticks N] [-- overrides...]`: the closed loop on one machine
(docs/loop.md#scheduling): one monitor run (`mlflow run . -e monitor`, one tick: the canary decided,
the served model watched, a retrain on a trigger) every `--every` seconds, each tick's line on the
terminal. Ctrl-C stops it cleanly: the tick in progress finishes (a retrain is not cut short) and
the loop exits 0; a second Ctrl-C stops that tick at once. A tick that fails (the store does not
answer, ...) is said and the next one runs on time: the champion keeps serving meanwhile."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def tick_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", "monitor", "--env-manager", "local",
            "-P", f"overrides={' '.join(overrides)}"]


def summary(stdout: str, stderr: str, code: int) -> str:
    """The tick's line: the monitor's own summary, else its error line, else the exit code."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("[mlpipe] monitor ran in "):
            return line.removeprefix("[mlpipe] ")
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")] or lines[-1:] or ["no output"]
    return f"tick failed (exit {code}): {errors[-1][:400]}; the champion keeps serving"


def _env() -> dict[str, str]:
    """The environment, with this interpreter's folder first on PATH: `mlflow run` starts the
    entry point with `python`, which must be the one that has this project's packages."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


class Loop:
    def __init__(self, every: float, ticks: int | None, overrides: list[str]):
        self.every, self.ticks, self.overrides = every, ticks, overrides
        self.stopping, self.child = False, None

    def interrupt(self, signum, frame) -> None:
        if self.stopping and self.child is not None and self.child.poll() is None:
            print("[loop] stopping the tick in progress now", flush=True)
            os.killpg(self.child.pid, signal.SIGTERM)
        elif not self.stopping:
            self.stopping = True
            print("[loop] stopping after this tick (Ctrl-C again to stop it now)" if self.child is not None
                  else "[loop] stopping", flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.interrupt)
        signal.signal(signal.SIGTERM, self.interrupt)
        done = 0
        while not self.stopping and (self.ticks is None or done < self.ticks):
            began = time.monotonic()
            self.child = subprocess.Popen(tick_command(self.overrides), cwd=PROJECT, env=_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True)
            out, err = self.child.communicate()
            code, self.child = self.child.returncode, None
            done += 1
            print(f"[loop] tick {done}: {summary(out, err, code)}", flush=True)
            while not self.stopping and (self.ticks is None or done < self.ticks) and \
                    time.monotonic() - began < self.every:
                time.sleep(min(0.2, self.every))
        print(f"[loop] stopped after {done} tick{'s' if done != 1 else ''}", flush=True)
        return 0


def main(argv: list[str]) -> int:
    head, overrides = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m mlpipe.loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, required=True, help="seconds from one tick's start to the next's")
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many ticks (default: never)")
    args = parser.parse_args(head)
    if args.every <= 0 or (args.ticks is not None and args.ticks < 1):
        parser.error("--every must be over 0 seconds and --ticks at least 1")
    return Loop(args.every, args.ticks, overrides).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
