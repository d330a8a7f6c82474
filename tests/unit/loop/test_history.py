"""mlpipe/loop/history.py: the loop's actions on a model from its monitor runs' tags."""

from types import SimpleNamespace

from mlpipe.loop import history


def _run(run_id, start, **tags):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, start_time=start), data=SimpleNamespace(tags=tags))


def test_runs_that_acted_are_listed_with_their_links_and_quiet_ones_counted():
    runs = [_run("m4", 1796600000000, **{"loop.trigger": "false", "loop.decision": "promote", "loop.canary_version": "2",
                                           "loop.promoted": "2", "loop.replaced": "1", "loop.version": "2"}),
            _run("m3", 1796590000000, **{"loop.trigger": "false", "loop.decision": "wait", "loop.canary_version": "2",
                                           "loop.version": "1"}),
            _run("m2", 1796580000000, **{"loop.trigger": "true", "loop.reason": "performance: accuracy fell",
                                           "loop.retrain_run_id": "r1", "loop.challenger": "2", "loop.version": "1"}),
            _run("m1", 1796570000000, **{"loop.trigger": "false", "loop.version": "1"})]
    rows, quiet = history.table(runs)
    assert quiet == 1 and [r[0] for r in rows] == ["m4", "m3", "m2"]
    assert rows[0][6:] == ["promote v2", "v2 (was v1)"] and rows[2][3:6] == ["performance: accuracy fell", "r1", "2"]
    assert rows[0][1] == "2026-12-06 23:33" and len(rows[0]) == len(history.HEADER)
