"""The closed loop (docs/loop.md): what the server answered, watched (`mlflow run . -e monitor`);
the rules that decide, with a false-alarm rate that holds when the monitor runs again and again
(`detect`); the state one monitor run hands the next (`state`); the served window read from the
records and the served model's training reference (`window`).

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.data.sources`, `mlpipe.quality`, `mlpipe.registry`, `mlpipe.run`, `mlpipe.serving`,
`mlpipe.training` (the watched model, loaded past the trust boundary)
"""
