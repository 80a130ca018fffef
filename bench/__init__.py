"""Benchmarks: each module measures the library and prints the numbers (speed, memory, sizes) as JSON lines that
BENCHMARKS.md quotes. Run from the repository root as modules: ``.venv/bin/python -m bench.encode_bench``."""
