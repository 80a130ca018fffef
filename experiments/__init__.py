"""Experiment drivers and reports beside the demo: each module trains, evaluates or reads runs for one question of
README.md "More experiments" (the `make experiments-*` targets) and prints what it found. Run from the repository root
as modules: ``.venv/bin/python -m experiments.transfer_report --run demo``."""
