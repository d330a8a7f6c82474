"""main: the driver. A Hydra app, so `python -m steps.main -m model.n_estimators=50,100` sweeps.

From MLproject it is called as `--steps=... --overrides="..."`; those become Hydra arguments."""

import sys

import hydra
from omegaconf import DictConfig

from mlpipe.config import register_resolvers
from mlpipe.pipeline.jobs import hydra_argv, preflight, run_job
from mlpipe.run.processes import stop_with_parent


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    register_resolvers()
    stop_with_parent()  # a killed `mlflow run` takes the driver, and so its steps, with it
    sys.argv = hydra_argv(sys.argv)
    preflight(sys.argv)
    main()
