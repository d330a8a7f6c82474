"""main: the driver. A Hydra app, so `python -m steps.main -m model.n_estimators=50,100` sweeps.

From MLproject it is called as `--steps=... --overrides="..."`; those become Hydra arguments.
One pipeline (no sweep, no Hydra flag or key) runs on the config the preflight composed."""

import sys

import hydra
from omegaconf import DictConfig

from mlpipe.config import register_resolvers, with_team
from mlpipe.pipeline.jobs import hydra_argv, preflight, run_job
from mlpipe.run.processes import exit_now, stop_with_parent


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    register_resolvers()
    stop_with_parent()  # a killed `mlflow run` takes the driver, and so its steps, with it
    sys.argv = hydra_argv(sys.argv)
    sys.argv = [sys.argv[0], *with_team(sys.argv[1:])]  # under a team: what its steps compose
    cfg = preflight(sys.argv)
    if cfg is None:
        main()
    else:
        run_job(cfg, [arg for arg in sys.argv[1:] if arg.strip()])
    exit_now()  # the runs have ended: skip the interpreter's teardown (a failure exited above)
