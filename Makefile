# Two commands do all set-up on a fresh machine (Python 3.11, git, make):
#   make run    creates .venv if missing, then runs the whole pipeline
#   make test   creates .venv if missing, then runs the test suite (make test-all: with the slow tests)
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-team.txt requirements-ray.txt requirements-dev.txt | sha1sum | cut -c1-12)
# An absolute SQLite path: steps run in other working directories (Git URIs, temp clones).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export PATH := $(BIN):$(PATH)

.PHONY: setup run test test-all bench clean team-server team-server-stop team-status demo

# The team's shared MLflow server (docs/team.md): conf/team/$(TEAM).yaml; TEAM_OVERRIDES for
# Hydra overrides such as team.server.port=5051 or team.server.backend_store_uri=postgresql://...
TEAM ?= demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements-team.txt requirements-ray.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.9
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

# `make run` keeps each dataset's runs in an experiment of its name (data=<name> in OVERRIDES,
# else the default in conf/config.yaml), unless MLFLOW_EXPERIMENT_NAME / _ID choose one.
DATA_NAME = $(or $(patsubst data=%,%,$(filter data=%,$(OVERRIDES))),$(shell sed -n 's/^  - data: *//p' conf/config.yaml))
EXPERIMENT = $(if $(MLFLOW_EXPERIMENT_NAME)$(MLFLOW_EXPERIMENT_ID),,--experiment-name $(DATA_NAME))

run: $(STAMP)
	$(BIN)/mlflow run . -e main --env-manager local $(EXPERIMENT) $(if $(OVERRIDES),-P overrides="$(OVERRIDES)")

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# Also the tests marked slow (fresh uv / virtualenv environments for `mlflow run`).
test-all: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

team-server: $(STAMP)
	$(BIN)/python -m mlpipe.team start --team $(TEAM) $(TEAM_OVERRIDES)

team-server-stop: $(STAMP)
	$(BIN)/python -m mlpipe.team stop --team $(TEAM) $(TEAM_OVERRIDES)

team-status: $(STAMP)
	$(BIN)/python -m mlpipe.team status --team $(TEAM) $(TEAM_OVERRIDES)

# The team story end to end: server, three members, a cross-team A/B test, the team report;
# stops everything it started and prints where to look (docs/team.md).
demo: $(STAMP)
	$(BIN)/python -m mlpipe.team demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs multirun .pytest_cache
