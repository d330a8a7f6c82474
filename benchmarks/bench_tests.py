"""The default test suite's cost from a fresh clone, as CI pays it: wall time and CPU-seconds.

Clones the project (a commit of this checkout, HEAD by default) into a temporary folder, runs
`make setup` there (timed on its own), then the README's test command (`make test`), and
reports:
- wall seconds of the test command;
- CPU-seconds (user + system) of every process on the machine while it ran, from /proc/stat:
  the suite's servers, `mlflow run` children and daemons that outlive their parents included
  (a process's own rusage misses those). Run it on an otherwise idle machine: anything else
  running is counted too. The idle CPU-seconds over the same span are printed beside it;
- the slowest modules, from the suite's own per-module progress lines.

Targets (issue 24): the default suite under 12 minutes and 1,200 CPU-seconds on two idle cores.

    .venv/bin/python benchmarks/bench_tests.py [--commit SHA] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
TARGETS = {"wall_min": 12.0, "cpu_s": 1200.0}
PROGRESS = re.compile(r"^\[\d+/\d+ modules, +[\d.]+ min\] (\S+): (.*) in ([\d.]+) s$")


def cpu_jiffies() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs since boot (/proc/stat's first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal, idle + iowait


def run(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float, float, float]:
    """(exit code, wall s, busy CPU s, idle CPU s) of a command, its output to `log`."""
    hz = os.sysconf("SC_CLK_TCK")
    busy0, idle0 = cpu_jiffies()
    started = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    busy1, idle1 = cpu_jiffies()
    return rc, wall, (busy1 - busy0) / hz, (idle1 - idle0) / hz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its logs)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", args.commit], cwd=PROJECT, capture_output=True, text=True,
                            check=True).stdout.strip()
    where = Path(tempfile.mkdtemp(prefix="bench-tests-"))
    clone = where / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(PROJECT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        print(f"fresh clone of {commit[:12]} in {clone}; {os.cpu_count()} CPUs", flush=True)
        rc, wall, busy, idle = run(["make", "setup"], clone, where / "setup.log")
        print(f"make setup: rc {rc}, {wall:.0f} s", flush=True)
        if rc != 0:
            return rc
        rc, wall, busy, idle = run(["make", "test"], clone, where / "test.log")
        text = (where / "test.log").read_text()
        summary = next((line for line in reversed(text.splitlines()) if " in " in line and "passed" in line), "?")
        print(f"make test: rc {rc}, {summary.strip('= ')}")
        print(f"  wall {wall:.0f} s = {wall / 60:.1f} min (target < {TARGETS['wall_min']:g} min: "
              f"{'met' if wall / 60 < TARGETS['wall_min'] else 'MISSED'})")
        print(f"  CPU {busy:.0f} s busy, {idle:.0f} s idle over the run (target < {TARGETS['cpu_s']:g} CPU-s: "
              f"{'met' if busy < TARGETS['cpu_s'] else 'MISSED'})")
        modules = sorted(((float(m.group(3)), m.group(1), m.group(2)) for line in text.splitlines()
                          if (m := PROGRESS.match(line.strip()))), reverse=True)
        print("  slowest modules (seconds of their tests, setup included):")
        for seconds, module, outcomes in modules[:15]:
            print(f"    {seconds:7.1f}  {module}  ({outcomes})")
        return rc
    finally:
        if args.keep:
            print(f"kept {where}")
        else:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
