"""Serving: the REST server (MLflow's wire format, A/B variants, micro-batching, alias
pick-up), its request records, the A/B statistics and report, and the smoke test.

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.signing`, `mlpipe.registry`, `mlpipe.reports`, `mlpipe.run`
(hand-offs, where the records file sits beside a SQLite store), `mlpipe.training` (loading
model files).
"""
