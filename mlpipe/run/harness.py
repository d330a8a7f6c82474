"""The one place run handling lives: arguments, config, the run, tags, timing, errors.

A step module is a recipe `def run(ctx: StepContext) -> None` handed to `step_main`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlpipe.config import PROJECT_ROOT, compose, flatten, shell_unquoted, split_overrides, to_container
from mlpipe.data.frames import return_freed_memory
from mlpipe.errors import PipelineError, StorageError, one_line
from mlpipe.pipeline import cache, key_inputs
from mlpipe.pipeline.spec import spec_of
from mlpipe.reports import cards
from mlpipe.run import handoff, monitor, outputs, processes, storage

ERROR_TYPE_TAG = "error.type"
ERROR_MESSAGE_TAG = "error.message"
MAX_TAG = 5000
# Set by the driver for its children.
QUIET_ENV = "MLPIPE_UNDER_DRIVER"


def quiet_warnings() -> None:
    """MLflow warnings that say nothing actionable about this pipeline's data."""
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")


def absolute_tracking_uri() -> None:
    """A relative sqlite URI would point each step (cwd may differ) at another database."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    database = storage.sqlite_path(uri)
    if database and not uri.startswith("sqlite:////"):
        absolute = f"sqlite:///{database}"
        os.environ["MLFLOW_TRACKING_URI"] = absolute
        mlflow.set_tracking_uri(absolute)


def pin_registry_uri() -> None:
    """Resolve the registry URI once, in the main thread, and pin it.

    MLflow's system-metrics thread builds an MlflowClient at every sample; with no registry URI
    set, that looks for an active Spark session with `from pyspark.sql import SparkSession`, an
    import that (pyspark is not installed) walks sys.meta_path each time under the global import
    lock, into MLflow's import-hook finder and its lock. `mlflow.models.evaluate` holds that hook
    lock while it imports, so qa deadlocked (seen here: both threads waiting forever). With the
    registry URI pinned (the same value MLflow would resolve) the thread imports nothing."""
    from mlflow.environment_variables import MLFLOW_REGISTRY_URI

    if not MLFLOW_REGISTRY_URI.get():
        mlflow.set_registry_uri(mlflow.get_registry_uri())


def fail_run(run_id: str, exc: BaseException, step: str) -> None:
    """Tag the run with what went wrong, say it in one line on stderr."""
    message = one_line(exc)
    client = MlflowClient()
    try:
        client.set_tag(run_id, ERROR_TYPE_TAG, type(exc).__name__)
        client.set_tag(run_id, ERROR_MESSAGE_TAG, message[:MAX_TAG])
    finally:
        # Under the driver, the driver says it once, naming the step and its run.
        if not os.environ.get(QUIET_ENV):
            print(f"error: {step}: {type(exc).__name__}: {message}", file=sys.stderr)


def _log_usage(started: float) -> None:
    """The step's resource figures, on FAILED runs too (best effort: the outcome matters more),
    and at least one sample of MLflow's system metrics however short the step was."""
    try:
        mlflow.log_metrics(monitor.usage(started))
    except Exception as exc:  # noqa: BLE001
        print(f"warning: resource figures not logged: {one_line(exc)}", file=sys.stderr)
    try:
        _last_system_sample()
    except Exception as exc:  # noqa: BLE001
        print(f"warning: the last system-metrics sample was not logged: {one_line(exc)}", file=sys.stderr)


def _last_system_sample() -> None:
    """MLflow's system-metrics monitor logs a sample only when a sampling interval completes:
    a step shorter than `monitor.sampling_interval` got none. Its monitor is stopped here, a
    step before `end_run` would, and when it logged nothing, the sample it collected (at its
    start) and one taken now are logged as its `system/*` metrics at step 0."""
    from mlflow.tracking import fluent

    active = mlflow.active_run()
    found = fluent.run_id_to_system_metrics_monitor.get(active.info.run_id) if active else None
    if found is None:
        return
    found.finish()  # joins its thread: nothing publishes concurrently below (end_run's finish is then a no-op)
    if found._logging_step == 0:  # MLflow internals (3.x): the next step it would log; 0 = nothing logged
        found.collect_metrics()
        found.publish_metrics(found.aggregate_metrics())
        found.mlflow_logger.flush()


def skip_databricks_checks() -> None:
    """Outside Databricks, MLflow's Databricks header provider answers "not in Databricks"
    without trying to import dbruntime, pyspark and IPython on every REST request (11 failed
    imports per request, measured on MLflow 3.17).

    It is a workaround for a deadlock as much as a saving: Python holds its import lock while it
    asks MLflow's import-hook finder, which takes MLflow's hooks lock, so the system-metrics
    thread's requests took both; the main thread, registering hooks in `mlflow.evaluate` (qa),
    holds the hooks lock and imports. A qa run of `make demo` hung 12 minutes so (py-spy:
    MainThread in register_evaluators waiting for the import lock, SystemMetricsMonitor in
    get_run waiting for the hooks lock)."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return
    from mlflow.tracking.request_header.databricks_request_header_provider import DatabricksRequestHeaderProvider

    DatabricksRequestHeaderProvider.in_context = lambda self: False


def terminate(run_id: str, step: str, exc: BaseException | None = None) -> None:
    """End a run that is not this process's active one (a sweep parent): FINISHED, or FAILED
    with the error tags when `exc` is given."""
    if exc is not None:
        fail_run(run_id, exc, step)
    MlflowClient().set_terminated(run_id, "FINISHED" if exc is None else "FAILED")


@contextmanager
def guarded_run(step: str, started: float | None = None, contain: bool = False,
                **start_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """Open (or resume) a run; any error ends it FAILED with tags and a distinct exit code.

    With `contain`, a PipelineError ends the run FAILED and goes no further (the `with` block is
    left, the process goes on): one failed sweep job does not stop the sweep."""
    started = time.monotonic() if started is None else started
    active = mlflow.start_run(**start_kwargs)
    run_id = active.info.run_id
    try:
        yield active
    except PipelineError as exc:
        fail_run(run_id, exc, step)
        _log_usage(started)
        mlflow.end_run("FAILED")
        if not contain:
            sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{step}: interrupted", file=sys.stderr)
        _log_usage(started)
        mlflow.end_run("KILLED")
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in storage.DISK_ERRNOS:
            # A full or read-only disk while writing: the run ends FAILED (never reused), said in one line.
            fail_run(run_id, StorageError(f"writing artifacts failed: {exc}"), step)
            code = StorageError.exit_code
        else:  # an unexpected bug: keep the traceback, still end the run cleanly
            traceback.print_exc()
            fail_run(run_id, exc, step)
            code = 1
        _log_usage(started)
        mlflow.end_run("FAILED")
        sys.exit(code)
    else:
        _log_usage(started)
        mlflow.end_run("FINISHED")


@dataclass
class StepContext:
    """What a step recipe gets: its config, its run, its upstream run, and the only ways to write
    to the run (metrics, tags, artifacts, datasets, the model, the typed hand-off)."""

    step: str
    cfg: DictConfig
    params: dict[str, str]
    run: Run
    upstream: Run | None
    client: MlflowClient = field(default_factory=MlflowClient)
    # What `key_input` returned for this run (ingest: the data digest), or None.
    key_input: str | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlpipe-")))
    # The step's report card: filled by the recipe, logged by step_main (also on failure).
    card: cards.Card | None = None
    # time.monotonic() when the step process began (for its resource figures).
    started: float = field(default_factory=time.monotonic)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def tracking_uri(self) -> str:
        return mlflow.get_tracking_uri()

    def section(self, key: str) -> Any:
        """A config section as plain dicts and lists (resolved), for core functions that take them."""
        return OmegaConf.to_container(OmegaConf.select(self.cfg, key, throw_on_missing=True), resolve=True)

    # -- reading ----------------------------------------------------------------------------
    def upstream_frame(self, name: str, run_id: str | None = None) -> "Any":
        return handoff.read_frame(self.client, run_id or self.upstream.info.run_id, f"data/{name}.parquet")

    def upstream_json(self, name: str, run_id: str | None = None) -> dict:
        return handoff.read_json(self.client, run_id or self.upstream.info.run_id, name)

    def upstream_output(self, kind: type[outputs.T], run: Run | None = None) -> outputs.T:
        """The typed hand-off of the upstream run (or of `run`)."""
        return kind.from_run(run or self.upstream)

    def artifact_source(self, path: str, run: Run | None = None) -> str:
        """The artifact `path` of this run (or of `run`) as a URI MLflow accepts as a dataset source."""
        return storage.dataset_source(f"{(run or self.run).info.artifact_uri}/{path}", self.tracking_uri)

    # -- writing: the only writer of a step's run ------------------------------------------
    def hand_over(self, output: outputs.StepOutput) -> None:
        """The step's typed outputs, as tags its readers parse with `from_run`."""
        mlflow.set_tags(output.tags())

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_text(self, text: str, path: str) -> None:
        mlflow.log_text(text, path)

    def log_json(self, name: str, obj: Any) -> None:
        mlflow.log_dict(obj, name)

    def log_frame(self, name: str, frame) -> str:
        path = self.workdir / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        handoff.write_parquet(frame, path)
        mlflow.log_artifact(str(path), artifact_path="data")
        return f"data/{name}.parquet"

    def log_files(self, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, frame, *, source: str, name: str, digest: str, context: str,
                    targets: str | None = None) -> None:
        """`frame` as a dataset input of the run (MLflow's lineage: the UI's Datasets column)."""
        dataset = mlflow.data.from_pandas(frame, source=source, targets=targets, name=name, digest=digest)
        log_input_once(dataset, context)

    def log_model(self, model, example, **kwargs: Any) -> str:
        """The fitted scikit-learn model (raw rows in) with its signature and input example;
        `kwargs` go to mlflow.sklearn.log_model. Returns the model's URI."""
        from mlflow.models import infer_signature

        info = storage.log_model(mlflow.sklearn.log_model, sk_model=model, name="model",
                                 signature=infer_signature(example, model.predict(example)),
                                 input_example=example, **kwargs)
        return info.model_uri

    def summary(self, text: str) -> None:
        """The short result the driver's table shows for this step."""
        mlflow.set_tag(handoff.SUMMARY_TAG, text)

    def finished_after_interrupt(self) -> None:
        """After Ctrl-C: keeps this run FINISHED once `mlflow run` (this process's launcher) has
        exited and wrongly marked it FAILED (mlpipe/run/interrupted.py). A process of its own,
        in its own session so that the terminal's Ctrl-C does not reach it."""
        import subprocess

        launcher = processes.launcher_pid()
        if launcher == 1:
            return
        subprocess.Popen([sys.executable, "-m", "mlpipe.run.interrupted", self.run_id, str(launcher)],
                         cwd=str(PROJECT_ROOT), start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def duplicate_dataset(exc: Exception) -> bool:
    """True for the store's answer to two runs registering the same new dataset at once: MLflow's
    SQL store looks for (experiment, name, digest), then inserts it, so the slower of two parallel
    steps (sweep jobs scoring the same test split) hits the unique constraint (SQLite and
    PostgreSQL word it differently; a tracking server passes the database's message on)."""
    text = str(exc).lower()
    return "unique constraint" in text and "datasets" in text


def log_input_once(dataset, context: str, attempts: int = 3) -> None:
    """mlflow.log_input, tried again when a parallel run inserted the same dataset first: the
    failed transaction wrote nothing, and the next attempt finds the row and links to it."""
    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == attempts - 1 or not duplicate_dataset(exc):
                raise
            time.sleep(0.05 * (attempt + 1))


def parse_args(step: str, extra: tuple[str, ...]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m steps.{step}")
    parser.add_argument("--overrides", default="", help="Hydra overrides, one string")
    spec = spec_of(step)
    if spec.upstream_param:
        parser.add_argument(f"--{spec.upstream_param.replace('_', '-')}", dest=spec.upstream_param, default="")
    for name in extra:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default="")
    return parser.parse_args(shell_unquoted(sys.argv[1:]))


def log_config(cfg: DictConfig, config: dict[str, Any], params: dict[str, str], run: Run) -> None:
    logged = run.data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.log_params({k: v[:6000] for k, v in flatten(config).items() if k not in logged})
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")


def step_main(step: str, recipe: Callable[[StepContext], None], *, extra_params: tuple[str, ...] = (),
              cacheable: Callable[[DictConfig], bool] | None = None) -> None:
    """Run one step: everything but the recipe itself happens here.

    What the step depends on beyond its config, code and upstream run (ingest: the data's
    digest; qa: the champion and the drift batch) comes from `keys.KEY_INPUTS`."""
    return_freed_memory()
    processes.stop_with_parent()
    absolute_tracking_uri()
    quiet_warnings()
    args = parse_args(step, extra_params)
    params = {k: v for k, v in vars(args).items()}
    spec = spec_of(step)
    started = time.monotonic()
    # Composed before the run opens (system metrics are switched on when it does); a bad config
    # is raised inside the run, so it still ends FAILED with its one-line message.
    try:
        cfg, config_error = compose(split_overrides(args.overrides)), None
    except PipelineError as exc:
        cfg, config_error = None, exc
    if cfg is not None:
        storage.apply_client_settings(to_container(cfg.storage))
    system_metrics = bool(cfg is not None and cfg.monitor.system_metrics)
    skip_databricks_checks()
    if system_metrics:
        pin_registry_uri()
        mlflow.set_system_metrics_sampling_interval(cfg.monitor.sampling_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    with guarded_run(step, started, run_name=os.environ.get("MLPIPE_RUN_NAME") or None,
                     log_system_metrics=system_metrics) as active:
        client = MlflowClient()
        # warm: forked by the driver's warm helper (mlpipe/run/warm.py); own: a process of its own
        mlflow.set_tags({handoff.STEP_TAG: step, handoff.PROCESS_TAG: "own" if processes.WARM_PARENT is None else "warm"})
        if config_error:
            raise config_error
        config = to_container(cfg)
        limits = monitor.Limits.from_config(config["monitor"])
        run = client.get_run(active.info.run_id)
        storage.check_run_location(run, config["storage"])
        # Before anything is written: probe where the artifacts go; fall back or fail.
        if storage.prepare(client, run, config["storage"], step, mlflow.get_tracking_uri()):
            run = client.get_run(active.info.run_id)
        log_config(cfg, config, params, run)
        upstream = None
        if spec.upstream_param:
            upstream = handoff.resolve_upstream(
                client, run.info.experiment_id, spec.upstream, params[spec.upstream_param]
            )
            params[spec.upstream_param] = upstream.info.run_id
            mlflow.set_tags({**handoff.lineage(upstream), f"pipeline.{spec.upstream_param}": upstream.info.run_id})
        extra = key_inputs.key_input(step, client, cfg, upstream)
        tags = {
            handoff.CONFIG_DIGEST_TAG: cache.config_digest(step, config),
            f"{handoff.LINEAGE_PREFIX}{step}_run_id": active.info.run_id,
            f"{handoff.LINEAGE_PREFIX}{step}_code_digest": cache.code_digest(step),
        }
        if cfg.team.name and cfg.team.member:  # the author of every run, under a team (conf/team)
            tags |= {"team.name": cfg.team.name, "team.member": cfg.team.member}
        if extra:
            tags[cache.KEY_INPUT_TAG] = extra
        if cacheable is None or cacheable(cfg):
            tags[cache.KEY_TAG] = cache.step_key(step, config, params, extra)
        mlflow.set_tags(tags)
        ctx = StepContext(step, cfg, params, client.get_run(active.info.run_id), upstream, client,
                          key_input=extra, card=cards.Card(step), started=started)
        ctx.card.inputs.update({k: v for k, v in params.items() if v and k != "overrides"})
        if args.overrides:
            ctx.card.inputs["overrides"] = args.overrides
        watchdog = monitor.Watchdog(step, limits, started)
        try:
            with watchdog:
                recipe(ctx)
                watchdog.final_check()
        except KeyboardInterrupt:
            log_card(ctx, "KILLED", "interrupted")
            raise
        except Exception as exc:
            log_card(ctx, "FAILED", f"{type(exc).__name__}: {one_line(exc)}")
            raise
        else:
            log_card(ctx, "FINISHED", None)
        finally:
            if watchdog.warnings:
                mlflow.set_tag(monitor.WARNING_TAG, "; ".join(watchdog.warnings.values()))
            shutil.rmtree(ctx.workdir, ignore_errors=True)


def log_card(ctx: StepContext, status: str, error: str | None) -> None:
    """The step's summary JSON and HTML card; a card that cannot be written never hides the step's
    own outcome (it is said on stderr instead)."""
    try:
        metrics = dict(ctx.client.get_run(ctx.run_id).data.metrics) | monitor.usage(ctx.started)
        data = cards.summary(ctx.card, run_id=ctx.run_id, experiment_id=ctx.run.info.experiment_id, status=status,
                             error=error, metrics=metrics)
        mlflow.log_dict(data, cards.CARD_JSON)
        mlflow.log_text(cards.render(data, ctx.card.sections), cards.CARD_HTML)
    except Exception as exc:  # noqa: BLE001 - the step's result matters more than its card
        print(f"warning: {ctx.step}: report card not written: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
