"""mlpipe/pipeline/harness.py: what a step process reads from its command line."""

from __future__ import annotations

from mlpipe.pipeline.harness import parse_args
from mlpipe.pipeline.jobs import hydra_argv


def test_the_step_parser_and_the_drivers_argv_read_mlflows_quoted_words(monkeypatch):
    monkeypatch.setattr("sys.argv", ["steps/train.py", "'--overrides=model=ridge main.force=[train]'",
                                     "--preprocess-run-id=abc"])
    args = parse_args("train", ())
    assert (args.overrides, args.preprocess_run_id) == ("model=ridge main.force=[train]", "abc")
    assert hydra_argv(["main.py", "--steps=all", "'--overrides=model=ridge seed=3'"]) == \
        ["main.py", "model=ridge", "seed=3"]
