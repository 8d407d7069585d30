"""Models on disk: model files, the registry and champion, promotion decisions, lineage."""
