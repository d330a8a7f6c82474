"""The model registry: versions, aliases and their lineage tags, the promotion lock, and the
pure decision whether a new version takes the champion alias.

May import: `mlpipe.errors`, `mlpipe.config`, `mlpipe.pipeline.cache` (the lock folder).
"""
