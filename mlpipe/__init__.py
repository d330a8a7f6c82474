"""mlpipe: the library behind the MLflow Project's steps (core logic, run harness, driver)."""
