"""End-to-end helpers: a real tracking store, `mlflow run` in a subprocess (fixtures in conftest.py)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Store:
    """A SQLite tracking store in a temp dir, and helpers that run the real CLI against it."""

    python_exe = sys.executable
    root = ROOT
    _empty: Path | None = None  # the empty store each new one copies (_template)

    def __init__(self, path: Path):
        self.path = path
        self.uri = f"sqlite:///{path / 'mlflow.db'}"
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.uri,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # System metrics cost about 1 s per step; test_resource_monitoring turns them on.
            "MLPIPE_SYSTEM_METRICS": "false",
            # the gate's signing key (trust.signing_key): one per store, not the user's own
            "MLPIPE_GATE_KEY": str(path / "gate.key"),
            "MLPIPE_FEEDBACK_SECRET": str(path / "feedback.secret"),
        }
        self.env.pop("MLFLOW_RUN_ID", None)
        self.env.pop("MLFLOW_EXPERIMENT_ID", None)
        # A new store must be created by one process before concurrent use: a copy of an empty
        # store this test process created once (MLflow's migrations cost about 2.5 CPU-s a store).
        shutil.copy(self._template(), path / "mlflow.db")

    @classmethod
    def _template(cls) -> Path:
        """An empty store with MLflow's tables, made once per test process the way a first
        `mlflow run` would (a process of its own, in the project folder: the Default experiment's
        artifact location is <project>/mlruns, as it was when each store made its own)."""
        if cls._empty is None:
            folder = Path(tempfile.mkdtemp(prefix="mlpipe-empty-store-"))
            atexit.register(shutil.rmtree, folder, True)
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
            subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
                           cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
            cls._empty = folder / "mlflow.db"
        return cls._empty

    def python(self, *args: str, cwd: Path = ROOT, check: bool = False, timeout: float = 600, env=None) -> Result:
        proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}:\n{result.output[-4000:]}")
        return result

    def mlflow_run(self, *args: str, uri: str = ".", entry: str = "main", env_manager: str | None = "local",
                   cwd: Path = ROOT, check: bool = False, timeout: float = 900, env=None) -> Result:
        cmd = ["-m", "mlflow", "run", uri, "-e", entry]
        if env_manager:
            cmd += ["--env-manager", env_manager]
        return self.python(*cmd, *args, cwd=cwd, check=check, timeout=timeout, env=env)

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def runs(self, filter_string: str = "") -> list:
        return self.client.search_runs(["0"], filter_string=filter_string, order_by=["attributes.start_time ASC"],
                                       max_results=1000)

    def step_runs(self, step: str) -> list:
        return self.runs(f"tags.`pipeline.step` = '{step}'")

    def newest(self, filter_string: str):
        runs = self.runs(filter_string)
        return runs[-1] if runs else None

    def children(self, parent_run_id: str) -> list:
        return self.runs(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def make_store(tmp_path_factory, name: str) -> Store:
    return Store(tmp_path_factory.mktemp(name))


MODEL = "wine_model"


def register_wine(store: Store) -> dict:
    """wine_model version 1 (champion) from a pipeline run, and version 2 of the same trained model."""
    store.mlflow_run("-P", "steps=ingest,preprocess,train,qa,register", check=True)
    client = store.client
    v1 = client.get_model_version_by_alias(MODEL, "champion")
    # a copy of the validated version (what the A/B report promotes): same source, same qa run
    store.python("-c", f"import mlflow; c = mlflow.MlflowClient(); v = c.get_model_version('{MODEL}', {v1.version}); "
                 f"c.create_model_version('{MODEL}', v.source, run_id=v.run_id, tags=v.tags)", check=True)
    v2 = client.get_model_version(MODEL, str(int(v1.version) + 1))
    test = store.client.download_artifacts(v1.tags["lineage.preprocess_run_id"], "data/test.parquet", str(store.path))
    spec = json.loads(Path(store.client.download_artifacts(v1.tags["lineage.preprocess_run_id"], "feature_spec.json",
                                                           str(store.path))).read_text())
    import pandas as pd

    rows = pd.read_parquet(test)[spec["numeric"] + spec["categorical"]]
    return {"v1": str(v1.version), "v2": str(v2.version), "rows": rows}
