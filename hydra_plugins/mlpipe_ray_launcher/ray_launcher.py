"""A Hydra launcher that runs each sweep job as a Ray task on a Ray cluster (hydra/launcher=ray).

Hydra takes launchers only from the `hydra_plugins` namespace package, hence this folder at the
project's root; it imports nothing heavy (Hydra imports every plug-in module when it starts).

Why our own: hydra-ray-launcher 1.2.2 requires cloudpickle<3 (our pin is 3.1.3), and
hydra-joblib-launcher hard-codes joblib's loky backend, so joblib's Ray backend cannot be put
under it. What a job does is Hydra's own: `execute_job` of the joblib plug-in, run in a Ray
worker. The nodes share nothing but the tracking server (and its artifact store): the code is
shipped with Ray's runtime_env, and each job gets the driver's tracking settings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)
# What a job needs from the driver's environment: the tracking server and its credentials, the
# sweep parent (MLPIPE_SWEEP_RUN_ID), the experiment. Not the warm helper's socket: a local path.
FORWARDED = ("MLFLOW_", "AWS_", "MLPIPE_")
NOT_FORWARDED = ("MLPIPE_WARM_SOCKET", "MLFLOW_RUN_ID")
# Left out of the code Ray uploads, beside what .gitignore names.
EXCLUDES = [".git", ".venv", "mlruns", "multirun", "outputs", "*.db", ".pytest_cache"]


def job_env(environ: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """The variables a job on another node gets (pure)."""
    env = {k: v for k, v in environ.items() if k.startswith(FORWARDED) and k not in NOT_FORWARDED}
    return {**env, **{str(k): str(v) for k, v in extra.items()}}


def rebased(context: HydraContext, driver_root: str, root: str) -> HydraContext:
    """The driver's Hydra context with its config folder (`<driver's checkout>/conf`, as Hydra
    writes a file path, or `file://...`) moved to this node's copy of the project: on another
    host the driver's path does not exist."""
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    if driver_root == root:
        return context
    search_path = copy.deepcopy(context.config_loader.config_search_path)
    for element in search_path.get_path():
        for scheme in ("", "file://"):
            if element.path.startswith(f"{scheme}{driver_root}/"):
                element.path = f"{scheme}{root}/" + element.path[len(f"{scheme}{driver_root}/"):]
    return HydraContext(config_loader=ConfigLoaderImpl(config_search_path=search_path), callbacks=context.callbacks)


def run_on_node(idx: int, overrides: Sequence[str], context: HydraContext, config: DictConfig,
                task_function: TaskFunction, state: dict, driver_root: str) -> JobReturn:
    """One Hydra job in a Ray worker, tagged with the node it ran on (tag pipeline.node)."""
    import ray
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from mlpipe.config import PROJECT_ROOT
    from mlpipe.pipeline.jobs import NODE_ENV

    os.environ[NODE_ENV] = ray.get_runtime_context().get_node_id()
    setup_globals()
    Singleton.set_state(state)  # Hydra's config sources, which a new loader needs (execute_job repeats it)
    context = rebased(context, driver_root, str(PROJECT_ROOT))
    return execute_job(idx, overrides, context, config, task_function, state)


class RayLauncher(Launcher):
    def __init__(self, address: str | None = "auto", num_cpus_per_job: float = 1, ship_code: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.address, self.num_cpus_per_job, self.ship_code = address, num_cpus_per_job, ship_code
        self.env = dict(env or {})
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        from mlpipe.config import PROJECT_ROOT

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        runtime_env: dict[str, Any] = {"env_vars": job_env(dict(os.environ), self.env)}
        if self.ship_code:
            runtime_env |= {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES}
        if not ray.is_initialized():
            ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=True)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        log.info(f"Ray cluster at {self.address}: {len(nodes)} node(s), "
                 f"{sum(n['Resources'].get('CPU', 0) for n in nodes):g} CPUs; launching {len(job_overrides)} jobs "
                 f"({self.num_cpus_per_job:g} CPU each), sweep output dir : {self.config.hydra.sweep.dir}")
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
        task = ray.remote(num_cpus=self.num_cpus_per_job, max_retries=0)(run_on_node)
        state = Singleton.get_state()
        refs = [task.remote(initial_job_idx + idx, overrides, self.hydra_context, self.config, self.task_function,
                            state, str(PROJECT_ROOT)) for idx, overrides in enumerate(job_overrides)]
        return ray.get(refs)
