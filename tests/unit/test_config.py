"""mlpipe/config.py: Hydra composition, the source_stem resolver, flattening, override splitting."""

from __future__ import annotations

import pytest

from mlpipe import config
from mlpipe.config import compose, digest, flatten, select, shell_unquoted, split_overrides, to_container, validate_cli
from mlpipe.errors import ConfigError


# -- compose -----------------------------------------------------------------------------------


def test_compose_defaults():
    cfg = to_container(compose([]))
    assert cfg["model"]["_target_"] == "sklearn.ensemble.RandomForestClassifier"
    assert cfg["data"]["source"] == "sklearn:wine"
    assert cfg["data"]["name"] == "wine"
    assert cfg["registry"]["model_name"] == "wine_model"
    assert cfg["seed"] == 42
    assert cfg["model"]["random_state"] == 42  # ${seed} is resolved
    assert cfg["serialization"] == "cloudpickle"
    assert "hydra" not in cfg
    assert set(cfg) == {"data", "preprocess", "model", "train", "qa", "registry", "serve", "main", "monitor", "loop", "storage",
                        "team", "seed", "serialization", "runtime", "skops_trusted_types", "trust"}
    assert cfg["runtime"] == cfg["serve"]["runtime"] == "onnx"
    assert cfg["team"]["name"] is None


def test_a_team_member_registers_into_their_own_model(monkeypatch):
    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    assert compose([]).registry.model_name == "wine_model"  # no team: a login changes nothing
    cfg = compose(["team=demo", "data=iris"])
    assert (cfg.team.member, cfg.registry.model_name, cfg.team.shared_model) == ("bob", "iris_model.bob", "iris_model")
    monkeypatch.setenv("MLPIPE_TEAM", "demo")  # what `python -m mlpipe.team as bob` sets
    assert compose([]).registry.model_name == "wine_model.bob"


@pytest.mark.parametrize("overrides,env,message", [
    (["team=demo", "team.member=dave"], None,
     "team.member='dave' is not a member of team demo (conf/team/demo.yaml): alice, bob, carol"),
    (["team=demo"], None, "team demo: who is running? log in as a member (MLFLOW_TRACKING_USERNAME"),
    (["team=demo", "team.member=bob", "team.lead=zed"], None,
     "team.lead='zed' is not a member of team demo (conf/team/demo.yaml): alice, bob, carol"),
])
def test_who_runs_under_a_team_is_one_of_its_members(monkeypatch, overrides, env, message):
    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("step,member,extra,message", [
    ("train", "reader", [], "team.member='reader' is the team's READ-only identity (team.reader.user): it runs only "
                            "serve and report; run train as a member"),
    ("main", "reader", [], "team.member='reader' is the team's READ-only identity"),
    ("report", "carol", [], "the team report loads every member's model: run it as the team's READ-only identity, "
                            "not as 'carol': python -m mlpipe.team as reader -- mlflow run . -e report"),
    ("serve", "alice", ["serve.team_variants=true"], "serve.team_variants=true loads every member's model: run it as "
                                                     "the team's READ-only identity, not as 'alice'"),
    ("report", "reader", [], None), ("serve", "reader", ["serve.team_variants=true"], None),
    ("serve", "alice", [], None), ("train", "alice", [], None),  # a member's own serving and steps
])
def test_the_read_only_identity_runs_the_teams_serving_and_report_and_only_it_does(monkeypatch, step, member, extra,
                                                                                  message):
    from mlpipe.config import check_identity

    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    cfg = compose(["team=demo", f"team.member={member}", *extra])
    if message is None:
        check_identity(step, cfg)
        return
    with pytest.raises(ConfigError) as info:
        check_identity(step, cfg)
    assert str(info.value).startswith(message)
    check_identity(step, compose([f"team.member={member}", *extra]))  # no team: no identities


def test_the_read_only_identity_needs_a_name_no_member_has(monkeypatch):
    monkeypatch.delenv("MLPIPE_TEAM", raising=False)
    with pytest.raises(ConfigError, match=r"team.reader.user='bob' is also a member of team demo"):
        compose(["team=demo", "team.member=alice", "team.reader.user=bob"])


def test_compose_model_group_switches_target():
    cfg = compose(["model=gradient_boosting"])
    assert cfg.model._target_ == "sklearn.ensemble.HistGradientBoostingClassifier"
    assert cfg.model.max_iter == 100
    assert "n_estimators" not in cfg.model


def test_compose_seed_reaches_model():
    assert compose(["seed=7"]).model.random_state == 7


def test_compose_value_override():
    assert compose(["model.n_estimators=10"]).model.n_estimators == 10


def test_compose_unknown_key_raises_config_error():
    with pytest.raises(ConfigError, match=r"model\.bogus"):
        compose(["model.bogus=1"])


def test_compose_unknown_top_level_key_raises_config_error():
    with pytest.raises(ConfigError, match="bogus"):
        compose(["bogus=1"])


def test_compose_unknown_model_names_it():
    with pytest.raises(ConfigError) as info:
        compose(["model=xgboost"])
    assert str(info.value) == ("model=xgboost: no such option in conf/model/; options: gradient_boosting, "
                               "gradient_boosting_regressor, logistic_regression, random_forest, "
                               "random_forest_regressor, ridge")  # one line, Hydra's search path cut


def test_compose_unknown_data_names_it():
    with pytest.raises(ConfigError, match="data=nope: no such option in conf/data/; options: base, breast_cancer"):
        compose(["data=nope"])


@pytest.mark.parametrize("override, message", [
    ("model=gradient_boostin", "model=gradient_boostin: no such option in conf/model/; did you mean "
                               "model=gradient_boosting?"),
    ("modle=gradient_boosting", "unknown config key modle; did you mean model?"),
    ("dat.source=x.csv", "unknown config key dat.source; did you mean data.source?"),
])
def test_a_mistyped_group_option_or_key_gets_did_you_mean(override, message):
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert str(info.value) == message


def test_compose_refuses_multirun_flag():
    with pytest.raises(ConfigError, match=r"sweep \(-m\).*driver"):
        compose(["-m", "model.n_estimators=10,20"])
    with pytest.raises(ConfigError, match="sweep"):
        compose(["--multirun"])


def test_compose_diabetes_selects_a_regressor():
    cfg = compose(["data=diabetes"])
    assert cfg.data.source == "sklearn:diabetes"
    assert cfg.data.name == "diabetes"
    assert cfg.model._target_ == "sklearn.ensemble.RandomForestRegressor"


def test_compose_diabetes_with_explicit_model():
    cfg = compose(["data=diabetes", "model=ridge"])
    assert cfg.model._target_ == "sklearn.linear_model.Ridge"


def test_compose_data_name_follows_source():
    cfg = compose(["data.source=/tmp/x/my_data.csv"])
    assert cfg.data.name == "my_data"
    assert cfg.registry.model_name == "my_data_model"


def test_compose_file_data_with_source_and_target():
    cfg = compose(["data=file", "data.source=/tmp/x/my_data.csv", "data.target=label"])
    assert cfg.data.source == "/tmp/x/my_data.csv"
    assert cfg.data.target == "label"
    assert cfg.data.name == "my_data"
    assert cfg.registry.model_name == "my_data_model"
    assert cfg.data.min_rows == 20  # inherited from the wine defaults


def test_compose_s3_source_name():
    cfg = compose(["data.source=s3://bucket/data/train.csv.gz"])
    assert cfg.data.name == "train"
    assert cfg.registry.model_name == "train_model"


def test_compose_file_data_requires_source():
    with pytest.raises(ConfigError, match=r"data\.source"):
        compose(["data=file"])


def test_compose_file_data_requires_target():
    with pytest.raises(ConfigError, match=r"data\.target"):
        compose(["data=file", "data.source=/tmp/x/my_data.csv"])


def test_compose_works_under_hydra_already_set_up_and_leaves_it_clear():
    """A process that has set Hydra up already (the driver under @hydra.main, a test's own
    initialize) can still compose: compose clears Hydra's global state first, and clears it again
    when done, so the next compose (or initialize) starts clean."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mlpipe.config import CONF_DIR

    outer = initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR))
    outer.__enter__()  # left set up, as a Hydra app leaves it
    try:
        assert GlobalHydra.instance().is_initialized()
        assert to_container(compose(["seed=1"]))["seed"] == 1
        assert not GlobalHydra.instance().is_initialized()
    finally:
        GlobalHydra.instance().clear()
    assert to_container(compose(["seed=1"])) == to_container(compose(["seed=1"]))


# -- validate_cli (the driver's preflight of a Hydra command line) -----------------------------


@pytest.mark.parametrize(
    "args, plain",
    [
        ([], True),
        (["model=ridge", "data.source=sklearn:diabetes"], True),
        (["-m", "model.n_estimators=10,20", "seed=1,2"], False),
        (["--multirun", "model=gradient_boosting,random_forest"], False),
        (["-m", "seed=range(1,3)"], False),
        (["hydra.verbose=true"], False),
        (["--cfg", "job"], False),
        (["model.n_estimators=10,20"], False),  # a sweep without -m: Hydra refuses it itself
    ],
)
def test_validate_cli_accepts_and_says_whether_the_config_is_the_one_to_run(args, plain):
    """A plain command line (one pipeline) runs on the config composed here; anything Hydra
    must run itself (a sweep, a flag, a Hydra key) is checked, then left to Hydra."""
    cfg, is_plain = validate_cli(args)
    assert is_plain is plain
    if plain:
        assert to_container(cfg) == to_container(compose(args))


@pytest.mark.parametrize(("args", "message"), [
    (["model.n_estimator=10"], "unknown config key model.n_estimator; did you mean model.n_estimators?"),
    (["+model.n_estimator=10"], "unknown config key model.n_estimator: sklearn.ensemble.RandomForestClassifier takes "
                                "no argument 'n_estimator'; did you mean model.n_estimators?"),
    (["-m", "qa.baseline.alfa=0.1,0.2"], "unknown config key qa.baseline.alfa; did you mean qa.baseline.alpha?"),
    (["+qa.baseline.alfa=0.1"], "unknown config key qa.baseline.alfa; did you mean qa.baseline.alpha?"),
    (["+extra=1"], "unknown config key extra; the config has data, loop, main, model, monitor, preprocess, qa, registry, "
                   "runtime, seed, serialization, serve, skops_trusted_types, storage, team, train, trust"),
])
def test_validate_cli_rejects_an_unknown_key_with_the_closest_one(args, message):
    with pytest.raises(ConfigError) as info:
        validate_cli(args)
    assert str(info.value) == message


def test_validate_cli_checks_first_sweep_value():
    with pytest.raises(ConfigError) as info:
        validate_cli(["-m", "model=xgboost,ridge"])
    message = str(info.value)
    assert message.startswith("model=xgboost: no such option in conf/model/")
    assert "Config search path" not in message


def test_validate_cli_bad_syntax():
    with pytest.raises(ConfigError) as info:
        validate_cli(["model.n_estimators=[1"])
    message = str(info.value)
    assert message.startswith("invalid override:")
    assert "[1" in message
    assert "\n" not in message


def test_validate_cli_accepts_hydra_flags_with_values():
    validate_cli(["--cfg", "job", "seed=1"])


def test_validate_cli_leaves_a_glob_sweep_to_hydra():
    """glob() needs Hydra's config loader to expand: the preflight accepts it, Hydra checks it."""
    assert validate_cli(["-m", "model=glob(random*)"])[1] is False


# -- source_stem resolver ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "stem"),
    [
        ("sklearn:wine", "wine"),
        ("sklearn:breast_cancer", "breast_cancer"),
        ("/tmp/x/my_data.csv", "my_data"),
        ("s3://b/data/train.csv", "train"),
        ("s3://b/data/train.csv.gz", "train"),
        ("file:///srv/sales.parquet", "sales"),
        ("relative.csv", "relative"),
        ("/tmp/dir/", "dir"),
        ("/tmp/.csv", "data"),
    ],
)
def test_source_stem(source, stem):
    assert config._source_stem(source) == stem


# -- split_overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize("empty", ["", None])
def test_split_overrides_empty(empty):
    assert split_overrides(empty) == []


def test_split_overrides_shell_rules():
    assert split_overrides("model=ridge  seed=3") == ["model=ridge", "seed=3"]
    assert split_overrides('data.source="/data/my file.csv" data.target=y') == [
        "data.source=/data/my file.csv", "data.target=y"]
    assert split_overrides("'model.max_depth=null' -m") == ["model.max_depth=null", "-m"]


def test_split_overrides_bad_quoting():
    with pytest.raises(ConfigError) as info:
        split_overrides('data.source="/data/my file.csv')
    message = str(info.value)
    assert "cannot parse overrides" in message
    assert "No closing quotation" in message
    assert "/data/my file.csv" in message


def test_split_overrides_compose_with_space_in_path():
    cfg = compose(split_overrides("data.source='/tmp/my dir/sales.csv'"))
    assert cfg.data.source == "/tmp/my dir/sales.csv"
    assert cfg.data.name == "sales"


# -- flatten / select / digest -----------------------------------------------------------------


def test_flatten_nested_values():
    flat = flatten({"model": {"n_estimators": 100, "max_depth": None, "sizes": [1, 2],
                              "name": "rf", "rate": 0.5, "deep": {"x": True}}, "seed": 42})
    assert flat == {
        "model.n_estimators": "100",
        "model.max_depth": "null",
        "model.sizes": "[1, 2]",
        "model.name": "rf",
        "model.rate": "0.5",
        "model.deep.x": "True",
        "seed": "42",
    }


def test_flatten_prefix():
    assert flatten({"a": 1}, prefix="cfg.") == {"cfg.a": "1"}


def test_flatten_composed_config():
    flat = flatten(to_container(compose([])))
    assert flat["model._target_"] == "sklearn.ensemble.RandomForestClassifier"
    assert flat["data.name"] == "wine"
    assert flat["model.max_depth"] == "null"
    assert flat["qa.thresholds.classification.accuracy"] == "null"
    assert flat["main.force"] == "False"
    assert all(isinstance(v, str) for v in flat.values())


def test_select_sorted_with_missing_keys():
    data = {"model": {"a": 1}, "seed": 3, "data": {"b": 2}}
    assert select(data, ["seed", "model", "absent"]) == {"absent": None, "model": {"a": 1}, "seed": 3}
    assert list(select(data, ["seed", "model"])) == ["model", "seed"]


def test_digest_is_stable_and_order_independent():
    a = digest({"x": 1, "y": [1, 2], "z": None})
    assert a == digest({"z": None, "y": [1, 2], "x": 1})
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != digest({"x": 2, "y": [1, 2], "z": None})
    assert digest({"y": [1, 2]}) != digest({"y": [2, 1]})


def test_a_password_in_a_records_url_is_refused():
    with pytest.raises(ConfigError, match=r"^serve.records holds a password.*PGPASSWORD or ~/.pgpass"):
        config.compose(["serve.records=postgresql://u:secret@127.0.0.1:5432/db"])
    with pytest.raises(ConfigError, match=r"^serve.records holds a password"):
        config.compose(["serve.records='postgresql://u@127.0.0.1:5432/db?password=secret'"])
    assert config.compose(["serve.records=postgresql://u@127.0.0.1:5432/db"]).serve.records.startswith("postgresql")


@pytest.mark.parametrize("given, expected", [
    (["--overrides=", "--train-run-id=abc"], ["--overrides=", "--train-run-id=abc"]),
    (["'--overrides=model=ridge seed=3'"], ["--overrides=model=ridge seed=3"]),
    (["'--overrides=x='\"'\"'it s'\"'\"''"], ["--overrides=x='it s'"]),
    (["'a' 'b'"], ["'a' 'b'"]),  # two shell words: not one quoted argument
    (["'unterminated"], ["'unterminated"]),
    (["'"], ["'"]),
])
def test_shell_unquoted(given, expected):
    assert shell_unquoted(given) == expected
