"""The test run's order and its progress.

Order, for two xdist workers (`--dist loadfile` hands out whole files in collection order): the
longest end-to-end modules first, so the run does not end with one worker on a long module
while the other idles. Weights are seconds measured on the 2-core machine (`--durations`);
a module not listed runs after these, in its usual order.

Progress: a line per test module as its last test ends (how its tests went, its seconds, how
many modules are done), so a long run shows where it is beyond the dots.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

MODULE_SECONDS = {  # measured at f76b2e2 (1118 tests, 18 min)
    "test_launchers.py": 165, "test_faults.py": 220, "test_tracking_server.py": 160, "test_team.py": 300,
    "test_serving.py": 165, "test_demo.py": 145, "test_s3_storage.py": 140, "test_ray_cluster.py": 125,
    "test_bad_inputs.py": 80, "test_main.py": 65, "test_records_postgres.py": 60, "test_errors.py": 55,
    "test_resource_monitoring.py": 40, "test_warm_steps.py": 40, "test_steps.py": 37, "test_sweeps.py": 37,
    "test_data_sources.py": 30, "test_model_gate.py": 18, "test_team_postgres.py": 17, "test_git_uri.py": 15,
    "test_model_io.py": 13, "test_kubernetes_backend.py": 10, "test_warm.py": 10, "test_browser_helper.py": 9,
    "test_card_viewer.py": 40, "test_onnx_gate.py": 65, "test_trust.py": 150, "test_loop.py": 200,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


class ModuleProgress:
    """Counts each module's tests as their reports arrive (in the xdist controller, or in the
    only process) and writes one line when a module's last test has ended."""

    def __init__(self, config) -> None:
        self.config = config
        self.expected: Counter = Counter()
        self.ended: Counter = Counter()
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.seconds: dict[str, float] = defaultdict(float)
        self.started = time.monotonic()
        self.modules_done = 0

    def _expect(self, nodeids) -> None:
        if not self.expected:  # every xdist worker collects the same tests: count them once
            self.expected.update(nodeid.split("::")[0] for nodeid in nodeids)

    def pytest_collection_finish(self, session) -> None:
        if not hasattr(self.config, "workerinput"):  # not a worker: without xdist, this process runs them
            self._expect(item.nodeid for item in session.items)

    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self._expect(ids)

    def pytest_runtest_logreport(self, report) -> None:
        module = report.nodeid.split("::")[0]
        self.seconds[module] += report.duration
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[module][report.outcome] += 1
        if report.when != "teardown" or module not in self.expected:
            return
        if report.failed:
            self.outcomes[module]["error"] += 1
        self.ended[module] += 1
        if self.ended[module] == self.expected[module]:
            self.modules_done += 1
            self._say(module)

    def _say(self, module: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        outcomes = ", ".join(f"{n} {kind}" for kind, n in sorted(self.outcomes[module].items()))
        elapsed = time.monotonic() - self.started
        if reporter._tw.width_of_current_line:  # after the dots of the tests so far
            reporter._tw.line()
        reporter.write_line(f"[{self.modules_done}/{len(self.expected)} modules, {elapsed / 60:4.1f} min] {module}: "
                            f"{outcomes} in {self.seconds[module]:.1f} s")


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(ModuleProgress(config), "mlpipe-module-progress")
