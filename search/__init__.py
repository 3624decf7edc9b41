"""The study loop: search-space parsing and sampling, the objective, workers, storage, and the CLI."""
