"""regrad: ReGrad (Retrievable Gradients) as a Jupyter-first, reproducible pipeline.

Packages, bottom layer first (docs/design.md, "Layers": a package imports its own layer and those below):
io (files, folders, processes) and config (presets) · data (questions, passages, probes, prompts) · retrieval (BM25,
02_augment) and core (the method: LoRA, the functional core, the learner) · bank (the Gradient Bank, 04_encode) ·
answering (one answering path for every method) and reporting (tables, effects, figures; no model) · training
(03_train) · cpt (continual post-training and drift) · evaluation (05_evaluate) · runner (papermill, launch, the
notebooks' set-up). testing holds test and benchmark helpers that no library module imports.
"""

__version__ = "0.1.0"

import warnings

# Without ipywidgets, tqdm.auto warns once per kernel and draws text bars, which is all a notebook here needs.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
