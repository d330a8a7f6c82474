"""What a step recipe gets: `StepContext`, its config, its run and upstream, and the only ways
a step writes to its run (metrics, tags, artifacts, datasets, the model, the typed hand-off,
the evaluation, the report card). `pipeline.harness.step_main` builds one per step process.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from mlpipe.config import PROJECT_ROOT
from mlpipe.errors import StorageError, UpstreamError, one_line
from mlpipe.reports import cards
from mlpipe.run import handoff, monitor, outputs, processes, storage


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
    def trust(self) -> tuple[str, Any]:
        """(serialization, skops_trusted_types): the trust boundary for loading model files."""
        return self.cfg.serialization, self.cfg.skops_trusted_types

    @property
    def tracking_uri(self) -> str:
        return mlflow.get_tracking_uri()

    def section(self, key: str) -> Any:
        """A config section as plain dicts and lists (resolved), for core functions that take them."""
        return OmegaConf.to_container(OmegaConf.select(self.cfg, key, throw_on_missing=True), resolve=True)

    # -- reading ----------------------------------------------------------------------------
    def upstream_frame(self, name: str, run_id: str | None = None) -> "Any":
        return handoff.read_frame(self.client, run_id or self.upstream.info.run_id, outputs.frame_artifact(name))

    def upstream_json(self, name: str, run_id: str | None = None) -> dict:
        return handoff.read_json(self.client, run_id or self.upstream.info.run_id, name)

    def upstream_output(self, kind: type[outputs.T], run: Run | None = None) -> outputs.T:
        """The typed hand-off of the upstream run (or of `run`)."""
        return kind.from_run(run or self.upstream)

    def newest_artifact(self, step: str, tags: dict[str, str], params: dict[str, str], path: str
                        ) -> tuple[str, str] | None:
        """(run id, text) of the artifact `path` of the newest FINISHED run of `step` in this
        run's experiment with these tags and params, or None when there is no such run."""
        found = handoff.newest_finished_run(self.client, self.run.info.experiment_id,
                                            {outputs.STEP_TAG: step} | tags, params=params)
        if found is None:
            return None
        run_id = found.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return run_id, handoff.download(self.client, run_id, path, tmp).read_text()
            except UpstreamError as exc:
                raise StorageError(f"cannot fetch {path} of {step} run {run_id}: {exc}") from exc

    def artifact_source(self, path: str, run: Run | None = None) -> str:
        """The artifact `path` of this run (or of `run`) as a URI MLflow accepts as a dataset source."""
        return storage.dataset_source(f"{(run or self.run).info.artifact_uri}/{path}", self.tracking_uri)

    # -- writing: the only writer of a step's run ------------------------------------------
    def hand_over(self, output: outputs.StepOutput, signed: dict[str, str] | None = None) -> None:
        """The step's typed outputs, as tags its readers parse with `from_run`, in one write with
        `signed` (qa's signed verdict: registry/provenance.verdict_tags)."""
        mlflow.set_tags(output.tags() | (signed or {}))

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
        return outputs.frame_artifact(name)

    def log_files(self, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dataset(self, frame, *, source: str, name: str, digest: str, context: str,
                    targets: str | None = None) -> None:
        """`frame` as a dataset input of the run (MLflow's lineage: the UI's Datasets column)."""
        dataset = mlflow.data.from_pandas(frame, source=source, targets=targets, name=name, digest=digest)
        log_input_once(dataset, context)

    def log_model(self, model, example, name: str = "model", files: dict[str, bytes] | None = None,
                  **kwargs: Any) -> str:
        """The fitted scikit-learn model (raw rows in) with its signature and input example, as the
        logged model `name` (what MLflow's UI lists), plus `files` (name -> content) beside its
        MLmodel (the ONNX conversion); `kwargs` go to mlflow.sklearn.log_model. Returns the
        model's URI."""
        from mlflow.models import infer_signature

        info = storage.log_model(mlflow.sklearn.log_model, sk_model=model, name=name,
                                 signature=infer_signature(example, model.predict(example)),
                                 input_example=example, **kwargs)
        if files:
            with tempfile.TemporaryDirectory(prefix="mlpipe-model-files-") as tmp:
                for file_name, content in files.items():
                    (Path(tmp) / file_name).write_bytes(content)
                self.client.log_model_artifacts(info.model_id, tmp)
        return info.model_uri

    def evaluate(self, model, frame, target: str, task: str, plot_dpi: float | None = None,
                 nested: str | None = None) -> "Evaluation":
        """mlflow.models.evaluate of `model` on `frame`: its metrics and plots go to this run, or
        to a nested run named `nested` (the champion's, so that they do not overwrite the
        candidate's). `plot_dpi` sets matplotlib's savefig.dpi for its PNG plots (MLflow draws
        some at 175 dpi: about 1 s of rendering per qa run and 3x the bytes of 80 dpi)."""
        import contextlib

        import matplotlib

        settings = {"savefig.dpi": plot_dpi} if plot_dpi else {}
        opened = mlflow.start_run(nested=True, run_name=nested) if nested else contextlib.nullcontext()
        with opened, matplotlib.rc_context(settings):
            result = evaluate_logged(model, frame, target, MODEL_TYPES[task])
        return Evaluation(dict(result.metrics), _images(result))

    def summary(self, text: str) -> None:
        """The short result the driver's table shows for this step."""
        mlflow.set_tag(outputs.SUMMARY_TAG, text)

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


def evaluate_logged(model, frame, target: str, model_type: str):
    """mlflow.models.evaluate in the active run, its evaluation data logged first by
    log_input_once: evaluate's own insert of the same dataset (parallel sweep jobs scoring one
    test split) then finds the row instead of racing for it."""
    dataset = mlflow.data.from_pandas(frame, targets=target)  # as evaluate names it: "dataset", no context
    log_input_once(dataset, None)
    return mlflow.models.evaluate(model, dataset, model_type=model_type,
                                  evaluator_config={"log_model_explainability": False})


def duplicate_dataset(exc: Exception) -> bool:
    """True for the store's answer to two runs registering the same new dataset at once: MLflow's
    SQL store looks for (experiment, name, digest), then inserts it, so the slower of two parallel
    steps (sweep jobs scoring the same test split) hits the unique constraint (SQLite and
    PostgreSQL word it differently; a tracking server passes the database's message on)."""
    text = str(exc).lower()
    return "unique constraint" in text and "datasets" in text


def log_input_once(dataset, context: str | None, attempts: int = 3) -> None:
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


MODEL_TYPES = {"classification": "classifier", "regression": "regressor"}


@dataclass
class Evaluation:
    """What mlflow.models.evaluate measured: its metrics (under its own names) and the PNG plots
    it drew (ROC, PR, confusion matrix...), by name, for the card."""

    metrics: dict[str, float]
    images: dict[str, bytes]


def _images(result) -> dict[str, bytes]:
    images = {}
    for name, artifact in (result.artifacts or {}).items():
        uri = getattr(artifact, "uri", "") or ""
        if not uri.endswith(".png"):
            continue
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
            with open(path, "rb") as fh:
                images[name.replace("_", " ")] = fh.read()
        except Exception:  # noqa: BLE001 - a plot we cannot read is left off the card
            continue
    return images


def log_card(ctx: StepContext, status: str, error: str | None) -> None:
    """The step's summary JSON and HTML card; a card that cannot be written never hides the step's
    own outcome (it is said on stderr instead)."""
    try:
        metrics = dict(ctx.client.get_run(ctx.run_id).data.metrics) | monitor.usage(ctx.started)
        data = cards.summary(ctx.card, run_id=ctx.run_id, experiment_id=ctx.run.info.experiment_id, status=status,
                             error=error, metrics=metrics)
        mlflow.log_dict(data, outputs.CARD_JSON)
        mlflow.log_text(cards.render(data, ctx.card.sections), outputs.CARD_HTML)
    except Exception as exc:  # noqa: BLE001 - the step's result matters more than its card
        print(f"warning: {ctx.step}: report card not written: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
