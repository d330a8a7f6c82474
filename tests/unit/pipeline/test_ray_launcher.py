"""hydra_plugins/mlpipe_ray_launcher: what a job on another node gets from the driver (pure)."""

from __future__ import annotations

from hydra_plugins.mlpipe_ray_launcher.ray_launcher import job_env, rebased


def test_a_job_gets_the_tracking_settings_credentials_and_the_sweep_not_the_local_socket():
    environ = {"MLFLOW_TRACKING_URI": "http://tracking:5000", "MLFLOW_EXPERIMENT_ID": "3",
               "MLPIPE_SWEEP_RUN_ID": "abc", "AWS_ACCESS_KEY_ID": "k", "MLFLOW_RUN_ID": "driver-run",
               "MLPIPE_WARM_SOCKET": "/tmp/mlpipe-warm-x/helper.sock", "HOME": "/root", "PATH": "/usr/bin"}
    assert job_env(environ, {"EXTRA": 1}) == {
        "MLFLOW_TRACKING_URI": "http://tracking:5000", "MLFLOW_EXPERIMENT_ID": "3", "MLPIPE_SWEEP_RUN_ID": "abc",
        "AWS_ACCESS_KEY_ID": "k", "EXTRA": "1"}


def test_the_configured_env_wins_over_the_driver_s():
    assert job_env({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
                   {"MLFLOW_TRACKING_URI": "http://tracking:5000"}) == {"MLFLOW_TRACKING_URI": "http://tracking:5000"}


def test_a_node_reads_the_config_from_its_own_copy_of_the_project():
    """The driver's Hydra context names `file://<driver's checkout>/conf`; on another host that
    path does not exist: the job composes from the node's copy (the one Ray unpacked)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    Plugins.instance()  # registers Hydra's config sources (pkg://, file://), as a job's worker has them
    search_path = ConfigSearchPathImpl()
    search_path.append("hydra", "pkg://hydra.conf")
    search_path.append("main", "/home/me/mlpipe/conf")  # how Hydra writes `python -m steps.main`'s
    search_path.append("extra", "file:///home/me/mlpipe/conf/extra")
    context = HydraContext(config_loader=ConfigLoaderImpl(search_path), callbacks=None)
    moved = rebased(context, "/home/me/mlpipe", "/tmp/ray/working_dir_files/_ray_pkg_1")
    assert [e.path for e in moved.config_loader.config_search_path.get_path()] == [
        "pkg://hydra.conf", "/tmp/ray/working_dir_files/_ray_pkg_1/conf",
        "file:///tmp/ray/working_dir_files/_ray_pkg_1/conf/extra"]
    assert [e.path for e in search_path.get_path()][1] == "/home/me/mlpipe/conf"  # the driver's is kept
    assert rebased(context, "/home/me/mlpipe", "/home/me/mlpipe") is context


def test_hydra_finds_the_launcher_and_its_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from mlpipe.config import PROJECT_ROOT

    names = [f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)]
    assert "hydra_plugins.mlpipe_ray_launcher.ray_launcher.RayLauncher" in names
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=ray"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.mlpipe_ray_launcher.ray_launcher.RayLauncher"
    assert cfg.hydra.launcher.ship_code is True and cfg.hydra.launcher.num_cpus_per_job == 1
