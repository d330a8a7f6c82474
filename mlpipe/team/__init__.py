"""A team on one shared, authenticated MLflow server: the server's life cycle (`server`), its
members, their passwords and permissions (`members`), the team report's readings of the registry,
the store and the records (`report`), replayed traffic for an A/B test (`traffic`), the demo, and the command line behind `make team-server`
and `python -m mlpipe.team` (`__main__`). MLflow's own `basic-auth` app does the authentication
and the permission checks; nothing here is a user system.

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.signing`, `mlpipe.data`, `mlpipe.quality`, `mlpipe.registry`, `mlpipe.reports`,
`mlpipe.run`, `mlpipe.serving`, `mlpipe.training`.
"""
