"""The model registry: versions, aliases and their lineage tags, provenance (which versions a qa
run vouches for), the champion a candidate is compared with, the promotion lock, and the pure
decision whether a new version takes the champion alias.

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.signing`, `mlpipe.run` (qa's typed hand-off, artifacts,
locks), `mlpipe.training` (model files and their digests).
"""
