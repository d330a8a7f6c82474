"""Test order for two xdist workers (`--dist loadfile` hands out whole files in collection order):
the longest end-to-end modules first, so the run does not end with one worker on a long module
while the other idles. Weights are seconds measured on the 2-core machine (`--durations`);
a module not listed runs after these, in its usual order."""

MODULE_SECONDS = {
    "test_s3_storage.py": 300, "test_faults.py": 300, "test_serving.py": 260, "test_main.py": 170,
    "test_tracking_server.py": 125, "test_sweeps.py": 120, "test_data_sources.py": 110, "test_git_uri.py": 105,
    "test_bad_inputs.py": 100, "test_model_gate.py": 95, "test_errors.py": 70, "test_resource_monitoring.py": 65,
    "test_steps.py": 65, "test_team.py": 160, "test_team_postgres.py": 45, "test_demo.py": 170,
    "test_records_postgres.py": 60, "test_browser_helper.py": 8, "test_warm_steps.py": 25, "test_warm.py": 15,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))
