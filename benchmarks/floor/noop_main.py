"""The floor driver: the same mlflow.run chain as steps/main.py, with no-op steps."""

import os

import mlflow

HERE = os.path.dirname(os.path.abspath(__file__))
CHAIN = [("ingest", None), ("preprocess", "ingest_run_id"), ("train", "preprocess_run_id"),
         ("qa", "train_run_id"), ("register", "qa_run_id"), ("serve", "model_uri")]

with mlflow.start_run() as parent:
    previous = None
    for step, param in CHAIN:
        params = {"overrides": ""}
        if param:
            params[param] = previous
        submitted = mlflow.run(HERE, entry_point=step, parameters=params, env_manager="local",
                               experiment_id=parent.info.experiment_id, run_name=step)
        previous = submitted.run_id
