"""regrad: ReGrad (Retrievable Gradients) as a Jupyter-first, reproducible pipeline.

Modules (one responsibility each; docs/design.md, "Layers", shows which may import which): paths, artifacts,
config, datasets, corpus, retrieval, augment, modeling, tiny_model (the offline test model), lora, prompts, regrad
(the functional core), train, bank, encode, evaluate, metrics, plots, pipeline; testing holds test and benchmark
helpers that no library module imports.
"""

__version__ = "0.1.0"

import warnings

# Without ipywidgets, tqdm.auto warns once per kernel and draws text bars, which is all a notebook here needs.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
