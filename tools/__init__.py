"""Developer tools that are neither library nor test: the mutation runner (planted bugs must fail a test). Run from
the repository root as modules: ``.venv/bin/python -m tools.mutations``."""
