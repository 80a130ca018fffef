"""regrad: ReGrad (Retrievable Gradients) as a Jupyter-first, reproducible pipeline.

Modules (one responsibility each): paths, artifacts, config, datasets, corpus, retrieval, augment, modeling,
lora, prompts, regrad (the functional core), train, bank, encode, evaluate, metrics, plots, pipeline, testing.
"""

__version__ = "0.1.0"
