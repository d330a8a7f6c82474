"""Test order for two xdist workers (`--dist loadfile` hands out whole files in collection order):
the longest end-to-end modules first, so the run does not end with one worker on a long module
while the other idles. Weights are seconds measured on the 2-core machine (`--durations`);
a module not listed runs after these, in its usual order."""

MODULE_SECONDS = {  # measured at f76b2e2 (1118 tests, 18 min)
    "test_launchers.py": 165, "test_faults.py": 220, "test_tracking_server.py": 160, "test_team.py": 155,
    "test_serving.py": 150, "test_demo.py": 145, "test_s3_storage.py": 140, "test_ray_cluster.py": 125,
    "test_bad_inputs.py": 80, "test_main.py": 65, "test_records_postgres.py": 60, "test_errors.py": 55,
    "test_resource_monitoring.py": 40, "test_warm_steps.py": 40, "test_steps.py": 37, "test_sweeps.py": 37,
    "test_data_sources.py": 30, "test_model_gate.py": 18, "test_team_postgres.py": 17, "test_git_uri.py": 15,
    "test_model_io.py": 13, "test_kubernetes_backend.py": 10, "test_warm.py": 10, "test_browser_helper.py": 8,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))
