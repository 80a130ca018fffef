"""Every artifact path of the project, in one place (design.md "Layout").

Two roots:
- the *repository* root holds code, configs, notebooks and the bundled ``data/sample``;
- the *work* root holds generated artifacts (indexes, models, augmented data, outputs, banks, results,
  executed notebooks). It is the repository root unless ``REGRAD_WORK`` names another folder, which is how
  tests keep their artifacts out of the checkout.

User-facing path parameters are repo-root-relative strings; :func:`resolve` turns them into absolute paths,
so nothing depends on the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from regrad_lib.io.params import folder_name, integer

__all__ = ["META_STATE", "PROVENANCE", "TRAINING_LOG", "TRAIN_REQUEST", "TRAIN_SUMMARY", "adapter_dir", "augmented_dir",
           "augmented_file", "bank_dir", "bank_parts_dir", "bank_split_dir", "configs_dir", "cpt_dir", "data_dir",
           "drift_dir", "drift_file", "executed_notebooks_dir", "figures_dir", "general_set_file", "index_dir",
           "kept_step_state", "meta_state_file", "metrics_file", "model_dir", "models_dir", "notebooks_dir",
           "offline_dir", "output_dir", "predictions_file", "preset_dir", "provenance_file", "question_adapter_dir",
           "relative", "repo_root", "resolve", "results_dir", "run_lock_file", "sample_corpus", "sample_dir",
           "scheme_metrics_file", "scheme_predictions_file", "schemes_file", "summary_file", "sweep_predictions_file",
           "sweeps_file", "train_request_file", "train_summary_file", "training_log_file", "work_root", "baseline_dir",
           "baseline_selection", "binding_matrix_file"]

_REPO = Path(__file__).resolve().parents[2]   # regrad_lib/io/paths.py -> the repository


def repo_root() -> Path:
    """The checkout: code, configs, notebooks, bundled sample."""
    return _REPO


def work_root() -> Path:
    """Where generated artifacts go (``REGRAD_WORK`` or the repository root)."""
    env = os.environ.get("REGRAD_WORK")
    return Path(env).expanduser().resolve() if env else _REPO


def resolve(path: str | os.PathLike) -> Path:
    """A user path: absolute stays, relative is taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (_REPO / p)


def relative(path: str | os.PathLike) -> str:
    """A path as users write it: repo-relative where possible (for logs and manifests)."""
    p = Path(path).resolve()
    for root in (work_root(), _REPO):
        try:
            return str(p.relative_to(root))
        except ValueError:
            continue
    return str(p)


# --- inputs ---------------------------------------------------------------------------------------------

def configs_dir() -> Path:
    return _REPO / "configs"


def preset_dir(preset: str) -> Path:
    return configs_dir() / folder_name("preset", preset)


def notebooks_dir() -> Path:
    return _REPO / "notebooks"


def sample_dir() -> Path:
    """The bundled mini-Wikipedia and question sets."""
    return _REPO / "data" / "sample"


def sample_corpus() -> Path:
    return sample_dir() / "psgs_w100.tsv"


def data_dir(dataset: str) -> Path:
    """Where a user puts a real dataset: ``data/<dataset>/``."""
    return _REPO / "data" / folder_name("dataset", dataset)


# --- generated artifacts ----------------------------------------------------------------------------------

def models_dir() -> Path:
    return work_root() / "models"


def model_dir(name: str) -> Path:
    return models_dir() / folder_name("model", name)


def index_dir(name: str) -> Path:
    """Embedded BM25 index ``indexes/<name>/``."""
    return work_root() / "indexes" / folder_name("index", name)


def augmented_dir(dataset: str) -> Path:
    return work_root() / "data" / "augmented" / folder_name("dataset", dataset)


def augmented_file(dataset: str, name: str) -> Path:
    """02_augment output ``data/augmented/<dataset>/<name>.json`` (name: dev, train_all, train_<n>)."""
    return augmented_dir(dataset) / f"{folder_name('split', name)}.json"


def output_dir(run: str) -> Path:
    """03_train output ``outputs/<run>/``."""
    return work_root() / "outputs" / folder_name("run", run)


def baseline_dir(run: str, method: str) -> Path:
    """A baseline trained on what meta-training used (``sft``, ``rag_sft``): ``outputs/<run>/baselines/<method>/``."""
    return output_dir(run) / "baselines" / folder_name("method", method)


def baseline_selection(run: str, method: str) -> Path:
    """The fine-tuned baseline's grid, validation rows and chosen learning rate, written last (it is trained)."""
    return baseline_dir(run, method) / "selected.json"


# The files of a training run, inside outputs/<run>/ (constants too: messages name them, and a run folder is
# sometimes given as a folder rather than a run name).
META_STATE = "meta_state.safetensors"       # the selected meta weights (phi and alpha)
TRAINING_LOG = "training_log.jsonl"         # one JSON row per logged step or validation, appended as training runs
TRAIN_REQUEST = "train_request.json"        # what was asked: datasets, training file, the trained preset sections
TRAIN_SUMMARY = "train_summary.json"        # written last: the run is finished
PROVENANCE = "provenance.json"              # in every artifact folder: configuration, git revision, libraries


def meta_state_file(run: str) -> Path:
    """``outputs/<run>/meta_state.safetensors``: the meta weights 03_train selected."""
    return output_dir(run) / META_STATE


def training_log_file(run: str) -> Path:
    return output_dir(run) / TRAINING_LOG


def train_request_file(run: str) -> Path:
    return output_dir(run) / TRAIN_REQUEST


def train_summary_file(run: str) -> Path:
    return output_dir(run) / TRAIN_SUMMARY


def provenance_file(folder: str | os.PathLike) -> Path:
    """The provenance record of an artifact folder (a run's, a figures folder)."""
    return Path(folder) / PROVENANCE


def kept_step_state(run: str, step: int) -> Path:
    """The weights 03_train kept after optimizer step ``step`` (``keep_steps``):
    ``outputs/<run>/steps/<step>/meta_state.safetensors``."""
    return output_dir(run) / "steps" / f"{int(step):06d}" / META_STATE


def run_lock_file(run: str) -> Path:
    """The advisory lock of one run's writers (03_train, 04_encode, 05_evaluate): ``outputs/.locks/<run>.lock``
    (outside the run folder, which training may replace; no run name starts with a dot)."""
    return work_root() / "outputs" / ".locks" / f"{folder_name('run', run)}.lock"


def offline_dir() -> Path:
    """The Gradient Banks, one folder per top-k: ``offline/``."""
    return work_root() / "offline"


def bank_split_dir(topk: int, run: str, dataset: str, split: str) -> Path:
    """The Gradient Banks of one split, a folder per storage scheme: ``offline/<topk>/<run>/<dataset>/<split>_all``."""
    return (work_root() / "offline" / str(integer("topk", topk, minimum=1)) / folder_name("run", run)
            / folder_name("dataset", dataset) / f"{folder_name('split', split)}_all")


def bank_dir(topk: int, run: str, dataset: str, split: str, scheme: str) -> Path:
    """04_encode output, the Gradient Bank ``offline/<topk>/<run>/<dataset>/<split>_all/<scheme>`` (``scheme``:
    a canonical scheme name such as ``bf16``, ``int4`` or ``int4-g128``, see :mod:`regrad_lib.bank.schemes`)."""
    if not scheme or "/" in scheme or scheme.startswith("."):
        raise ValueError(f"scheme={scheme!r} is not a scheme name such as 'int4' or 'bf16'")
    return bank_split_dir(topk, run, dataset, split) / scheme


def bank_parts_dir(bank: Path) -> Path:
    """The parts of a bank being written by several processes (``<bank>/.parts/<attempt>-r<rank>/``, each a bank);
    merged into the bank's manifest when every process has finished."""
    return bank / ".parts"


def adapter_dir(run: str) -> Path:
    """The run's meta-trained ``phi`` as a PEFT LoRA adapter ``outputs/<run>/adapter/``."""
    return output_dir(run) / "adapter"


def results_dir(run: str, evaluation: str | None = None) -> Path:
    """05_evaluate output ``results/<run>/``; a named evaluation (other settings, exploration) goes beside it
    in ``results/<run>/evaluations/<evaluation>/``."""
    root = work_root() / "results" / folder_name("run", run)
    if evaluation is None:
        return root
    return root / "evaluations" / folder_name("evaluation", evaluation)


def summary_file(run: str, evaluation: str | None = None) -> Path:
    """05_evaluate's score table ``results/<run>/summary.csv``: one row per dataset and method."""
    return results_dir(run, evaluation) / "summary.csv"


def sweeps_file(run: str, evaluation: str | None = None) -> Path:
    """05_evaluate's sweep table ``results/<run>/sweeps.csv``: one row per dataset, method and sweep point."""
    return results_dir(run, evaluation) / "sweeps.csv"


def schemes_file(run: str, evaluation: str | None = None) -> Path:
    """05_evaluate's storage-scheme table ``results/<run>/schemes.csv``: regrad on each scheme's bank."""
    return results_dir(run, evaluation) / "schemes.csv"


def predictions_file(run: str, dataset: str, method: str, evaluation: str | None = None) -> Path:
    """One method's answers ``results/<run>/<dataset>/<method>.predictions.jsonl``."""
    return results_dir(run, evaluation) / dataset / f"{method}.predictions.jsonl"


def metrics_file(run: str, dataset: str, method: str, evaluation: str | None = None) -> Path:
    """One method's scores and settings ``results/<run>/<dataset>/<method>.metrics.json`` (written last: the
    method is done)."""
    return results_dir(run, evaluation) / dataset / f"{method}.metrics.json"


def scheme_predictions_file(run: str, dataset: str, scheme: str, evaluation: str | None = None) -> Path:
    """regrad's answers on one storage scheme's bank:
    ``results/<run>/<dataset>/schemes/regrad.<scheme>.predictions.jsonl``."""
    return results_dir(run, evaluation) / dataset / "schemes" / f"regrad.{scheme}.predictions.jsonl"


def scheme_metrics_file(run: str, dataset: str, scheme: str, evaluation: str | None = None) -> Path:
    """``results/<run>/<dataset>/schemes/regrad.<scheme>.metrics.json`` (written last: the scheme is done)."""
    return results_dir(run, evaluation) / dataset / "schemes" / f"regrad.{scheme}.metrics.json"


def binding_matrix_file(run: str, evaluation: str | None = None) -> Path:
    """The answer NLL of each binding-probe family member's value under each question's update (and without it):
    ``results/<run>/probe_binding/binding_matrix.json``."""
    return results_dir(run, evaluation) / "probe_binding" / "binding_matrix.json"


def cpt_dir(run: str, dataset: str, evaluation: str | None = None) -> Path:
    """Continual post-training on one dataset's documents (methods cpt, cpt_rag): ``results/<run>/<dataset>/cpt/``
    (its checkpoint, a chunk at a time, and ``drift.json``, the measures after every chunk)."""
    return results_dir(run, evaluation) / dataset / "cpt"


def drift_dir(run: str, evaluation: str | None = None) -> Path:
    """What drift is measured on (held-out general text, general questions) and at the base and meta-trained
    weights: ``results/<run>/drift/``."""
    return results_dir(run, evaluation) / "drift"


def drift_file(run: str, dataset: str, evaluation: str | None = None) -> Path:
    """The drift measures of continual post-training on one dataset, one row before the first chunk and one after
    each: ``results/<run>/<dataset>/cpt/drift.json``."""
    return cpt_dir(run, dataset, evaluation) / "drift.json"


def general_set_file(run: str, evaluation: str | None = None) -> Path:
    """The general set drift is measured on, with its measures at the base and the meta-trained weights:
    ``results/<run>/drift/general_set.json``."""
    return drift_dir(run, evaluation) / "general_set.json"


def sweep_predictions_file(run: str, dataset: str, method: str, gamma: float, topk: int, scheme: str = "",
                           evaluation: str | None = None, mixed: float = 0.0) -> Path:
    """Predictions of one computed point of 05_evaluate's sweep, ``results/<run>/<dataset>/sweeps/
    <method>.gamma-<gamma>.topk-<topk>[.mixed-<mixed>][.<scheme>].predictions.jsonl`` (points reused from a method's
    own results, such as gamma 0 from ``no_update``, are that method's predictions file)."""
    name = (f"{method}.gamma-{float(gamma):g}.topk-{int(topk)}" + (f".mixed-{float(mixed):g}" if mixed else "")
            + (f".{scheme}" if scheme else ""))
    return results_dir(run, evaluation) / dataset / "sweeps" / f"{name}.predictions.jsonl"


def question_adapter_dir(run: str, name: str) -> Path:
    """One question's adapted weights ``phi'_q`` as a PEFT adapter ``results/<run>/adapters/<name>/``."""
    return results_dir(run) / "adapters" / folder_name("adapter name", name)


def figures_dir(run: str, evaluation: str | None = None) -> Path:
    return results_dir(run, evaluation) / "figures"


def executed_notebooks_dir(run: str, evaluation: str | None = None) -> Path:
    """papermill's executed copies ``runs/<run>/`` (those of a runner call with a named evaluation in
    ``runs/<run>/evaluations/<evaluation>/``, as its results, so they never overwrite the run's own)."""
    if evaluation is None:
        return work_root() / "runs" / folder_name("run", run)
    results_dir(run, evaluation)          # checks the names
    return work_root() / "runs" / run / "evaluations" / evaluation
