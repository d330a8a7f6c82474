"""A run's life, in one place: the process settings every run needs, opening a run (a step, a
pipeline job, a sweep job, the driver's preflight) and ending one FAILED with its error.

- `open_run` opens (or resumes) a run under guard, with the configured client timeouts
  (`storage.http`, `storage.s3_client`), the probe of where its artifacts go (and the fallback),
  and the composed config logged; any error inside ends the run FAILED.
- `fail_run` is the one way a run is marked failed: the error's own class in `error.type`, its
  one-line text in `error.message`, FAILED, and the line on stderr.
- `exit_code` is the one map from an error to the process's exit status.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from omegaconf import DictConfig, OmegaConf

from mlpipe.config import flatten, to_container
from mlpipe.errors import PipelineError, StorageError, one_line
from mlpipe.run import monitor, storage
from mlpipe.run.outputs import CONFIG_ARTIFACT, ERROR_MESSAGE_TAG, ERROR_TYPE_TAG, MAX_TAG

# Set by the driver for its children: the driver says a child's error once, naming its step and run.
QUIET_ENV = "MLPIPE_UNDER_DRIVER"
# A logged config value is cut here (MLflow's param limit is 6000 characters).
MAX_PARAM = 6000


# -- the process ------------------------------------------------------------------------------

def prepare_process() -> None:
    """What every process that opens runs sets first: an absolute SQLite tracking URI, MLflow's
    warnings that say nothing actionable here off, and no Databricks probing per request."""
    absolute_tracking_uri()
    quiet_warnings()
    skip_databricks_checks()


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


def apply_client_settings(cfg: DictConfig) -> None:
    """The configured timeouts and retries (`storage.http`, `storage.s3_client`) for every
    network call of this process and its children, before the first one. Only `storage` is
    resolved: a sweep's config holds Hydra keys that resolve per job."""
    storage.apply_client_settings(OmegaConf.to_container(cfg.storage, resolve=True))


# -- ending a run -----------------------------------------------------------------------------

def exit_code(exc: BaseException) -> int:
    """The process exit status for an error: its class's code, StorageError's for a full or
    read-only disk, 1 for anything unexpected."""
    if isinstance(exc, PipelineError):
        return exc.exit_code
    if as_storage_error(exc) is not None:
        return StorageError.exit_code
    return 1


def as_storage_error(exc: BaseException) -> StorageError | None:
    """A full or read-only disk while writing, as the StorageError it is for a user."""
    if isinstance(exc, OSError) and exc.errno in storage.DISK_ERRNOS:
        return StorageError(f"writing artifacts failed: {exc}")
    return None


def fail_run(run_id: str, exc: BaseException, name: str, end: bool = True, say: bool | None = None) -> None:
    """Mark a run failed: `error.type` is the error's own class, `error.message` its one line;
    FAILED unless `end` is False (the caller ends its active run itself). The line goes to
    stderr unless `say` is False (by default: not under the driver, which says it once)."""
    message = one_line(exc)
    client = MlflowClient()
    try:
        client.set_tag(run_id, ERROR_TYPE_TAG, type(exc).__name__)
        client.set_tag(run_id, ERROR_MESSAGE_TAG, message[:MAX_TAG])
        if end:
            client.set_terminated(run_id, "FAILED")
    finally:
        if say if say is not None else not os.environ.get(QUIET_ENV):
            print(f"error: {name}: {type(exc).__name__}: {message}", file=sys.stderr)


def terminate(run_id: str, name: str, exc: BaseException | None = None) -> None:
    """End a run that is not this process's active one (a sweep parent): FINISHED, or failed
    with `exc`."""
    if exc is not None:
        fail_run(run_id, exc, name)
    else:
        MlflowClient().set_terminated(run_id, "FINISHED")


def _log_usage(started: float) -> None:
    """The process's resource figures, on FAILED runs too (best effort: the outcome matters
    more), and at least one sample of MLflow's system metrics however short the run was."""
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


@contextmanager
def guarded(name: str, started: float | None = None, contain: bool = False,
            **start_kwargs: Any) -> Iterator[mlflow.ActiveRun]:
    """Open (or resume) a run; any error ends it FAILED (`fail_run`) and the process with its
    `exit_code`; Ctrl-C ends it KILLED (exit 130).

    With `contain`, a PipelineError ends the run FAILED and goes no further (the `with` block is
    left, the process goes on): one failed sweep job does not stop the sweep."""
    started = time.monotonic() if started is None else started
    active = mlflow.start_run(**start_kwargs)
    run_id = active.info.run_id
    try:
        yield active
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        _log_usage(started)
        mlflow.end_run("KILLED")
        sys.exit(130)
    except Exception as exc:
        shown = exc if isinstance(exc, PipelineError) else as_storage_error(exc)
        if shown is None:  # an unexpected bug: keep the traceback, still end the run cleanly
            traceback.print_exc()
        fail_run(run_id, shown or exc, name, end=False)
        _log_usage(started)
        mlflow.end_run("FAILED")
        if not (contain and isinstance(exc, PipelineError)):
            sys.exit(exit_code(exc))
    else:
        _log_usage(started)
        mlflow.end_run("FINISHED")


# -- opening a run ----------------------------------------------------------------------------

def quiet_downloads(cfg) -> None:
    """main.log=quiet: no artifact download progress bars (cards, configs) from this process."""
    if cfg.main.log == "quiet":
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def store_address(uri: str, cwd: str) -> str:
    """The tracking URI with a relative SQLite or file path made absolute (against `cwd`): the
    store a user can find again."""
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme) and not uri.startswith(scheme + "/"):
            return scheme + os.path.abspath(os.path.join(cwd, uri[len(scheme):]))
    if "://" not in uri:  # a bare folder: MLflow's file store
        return os.path.abspath(os.path.join(cwd, uri))
    return storage.masked_url(uri)  # a line a command prints must not carry a password


def where_line(client: MlflowClient, run: Run, dataset: str | None = None) -> str:
    """`[mlpipe] tracking store <uri>, experiment "<name>" (id <id>), run <id>`; and when the
    store holds nothing but this run, that it is new (a run from a Git URI or another folder
    without MLFLOW_TRACKING_URI lands in a new ./mlflow.db where `mlflow run` started); in
    MLflow's Default experiment, how to keep `dataset`'s runs apart (`make run` does)."""
    experiment = client.get_experiment(run.info.experiment_id)
    line = (f"[mlpipe] tracking store {store_address(mlflow.get_tracking_uri(), os.getcwd())}, experiment "
            f'"{experiment.name}" (id {experiment.experiment_id}), run {run.info.run_id}')
    experiments = [e.experiment_id for e in client.search_experiments(max_results=3)]
    if len(experiments) <= 2 and [r.info.run_id for r in client.search_runs(experiments, max_results=2)] \
            == [run.info.run_id]:  # Default, and the one --experiment-name made: nothing but this run
        line += "; a new store: no run before this one (set MLFLOW_TRACKING_URI to use another)"
    if dataset and experiment.experiment_id == DEFAULT_EXPERIMENT_ID:
        line += f"; Default holds every dataset's runs: --experiment-name {dataset} keeps these apart (make run does)"
    return line

@dataclass
class Opened:
    """An open run: its id, the run as the store holds it after the probe, and the config."""

    run_id: str
    run: Run
    client: MlflowClient
    config: dict[str, Any] | None


def log_config(cfg: DictConfig, config: dict[str, Any], params: dict[str, str], run: Run) -> None:
    """The run's parameters, every config value as a param and the resolved config as YAML."""
    logged = run.data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.log_params({k: v[:MAX_PARAM] for k, v in flatten(config).items() if k not in logged})
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), CONFIG_ARTIFACT)


@contextmanager
def open_run(name: str, cfg: DictConfig | None, *, tags: dict[str, str] | None = None,
             params: dict[str, str] | None = None, config_error: PipelineError | None = None,
             system_metrics: bool = False, check_location: bool = False, contain: bool = False,
             started: float | None = None, **start_kwargs: Any) -> Iterator[Opened]:
    """Open (or resume) a run for a step, a pipeline job, a sweep job or the preflight, under
    `guarded`: the client timeouts of `cfg` applied first; `tags` set as soon as the run is open;
    then `config_error` raised (a config that did not compose still ends its run FAILED with
    its one line); then the artifact store probed (`storage.prepare`: fall back or fail) and
    the config logged. Without `cfg` (a preflight's bad command line) only the tags are set."""
    if cfg is not None:
        apply_client_settings(cfg)
    if system_metrics:
        pin_registry_uri()
        mlflow.set_system_metrics_sampling_interval(cfg.monitor.sampling_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    with guarded(name, started, contain, log_system_metrics=system_metrics, **start_kwargs) as active:
        client = MlflowClient()
        if tags:
            mlflow.set_tags(tags)
        if config_error is not None:
            raise config_error
        run = client.get_run(active.info.run_id)
        if cfg is not None and not os.environ.get(QUIET_ENV):  # the command's own run: say where it went
            print(where_line(client, run, OmegaConf.select(cfg, "data.name")), file=sys.stderr, flush=True)
        config = None
        if cfg is not None:
            config = to_container(cfg)
            if check_location:
                storage.check_run_location(run, config["storage"])
            # Before anything is written: probe where the artifacts go; fall back or fail.
            if storage.prepare(client, run, config["storage"], name, mlflow.get_tracking_uri()):
                run = client.get_run(active.info.run_id)
            log_config(cfg, config, params or {}, run)
        yield Opened(active.info.run_id, run, client, config)
