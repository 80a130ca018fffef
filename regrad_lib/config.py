"""Typed configuration: the JSON files of a preset, validated, unknown keys rejected.

A preset is a folder ``configs/<preset>/`` holding ``peft_config.json``, ``learner_config.json``,
``train_args.json`` and ``generation_config.json`` (the seed's schema) and, optionally, ``cpt_config.json`` (the
continual post-training baseline; its defaults when absent, as in runs trained before it existed). A *variant*
folder may instead hold a ``variant.json``: ``{"base": "<preset>", "learner": {...}, "train": {...}, ...}``, a small
diff on top of a preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from regrad_lib.io import artifacts, paths

AlphaMode = Literal["fix", "same", "tie", "full"]
Precision = Literal["bf16", "no"]   # fp16 is refused for training (no loss scaling)
Scheduler = Literal["linear", "cosine"]
OnNonFinite = Literal["error", "skip"]
BestMetric = Literal["f1", "loss"]
PassageFormat = Literal["text", "title_text"]
PromptStyle = Literal["instruct", "example"]
ContextOrder = Literal["rank", "reversed"]
PromptPassages = Literal["whole", "as_gradient"]
CptWeights = Literal["lora", "phi", "full"]
CptObjective = Literal["raw", "replay"]

FILES = {"peft": "peft_config.json", "learner": "learner_config.json", "train": "train_args.json",
         "generation": "generation_config.json"}
OPTIONAL_FILES = {"cpt": "cpt_config.json", "baselines": "baseline_config.json"}     # absent: the defaults


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the file and key."""


def _check_literal(obj: Any, name: str, allowed: tuple) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{type(obj).__name__}.{name} = {value!r} is not allowed; choose one of {list(allowed)}")


def check_number(value: Any, where: str, *, allow_zero: bool = False) -> None:
    """``value`` must be a finite number > 0 (>= 0 with ``allow_zero``); NaN and inf are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} = {value!r} must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where} = {value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        if getattr(obj, name) is not None:
            check_number(getattr(obj, name), f"{type(obj).__name__}.{name}", allow_zero=allow_zero)


def _check_finite(obj: Any) -> None:
    """Every float field is finite (NaN compares false with every bound, so range checks alone pass it)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{type(obj).__name__}.{f.name} = {value!r} must be a finite number")


@dataclass
class PeftConfig:
    """LoRA layout, a typed view of peft's ``LoraConfig`` (peft itself validates the file first): where the fast
    weights phi live, with peft's meaning for every key (:func:`regrad_lib.core.lora.targeted`)."""
    r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    bias: Literal["none"] = "none"
    task_type: Literal["CAUSAL_LM"] = "CAUSAL_LM"
    init_lora_weights: bool | str = True     # True (A kaiming, B zero), False (both kaiming) or "gaussian"

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_positive(self, "r", "lora_alpha")
        if self.lora_dropout != 0.0:
            raise ConfigError(f"PeftConfig.lora_dropout = {self.lora_dropout!r}: only 0.0 is supported "
                              "(the inner gradient step must be deterministic)")
        _check_literal(self, "bias", ("none",))
        _check_literal(self, "task_type", ("CAUSAL_LM",))
        if not self.target_modules:
            raise ConfigError("PeftConfig.target_modules is empty; name at least one linear layer, e.g. 'up_proj'")
        init = self.init_lora_weights
        if not isinstance(init, bool) and str(init).lower() != "gaussian":
            raise ConfigError(f"PeftConfig.init_lora_weights = {init!r} is not supported: regrad initialises LoRA "
                              "without data and without changing the base weights; use true, false or 'gaussian'")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r


def _validated_by_peft(data: dict, where: str) -> dict:
    """peft's own ``LoraConfig`` checks a peft section first, so a key peft does not know or a value it rejects
    fails as peft fails (its message, after the file name). Keys of ``LoraConfig`` that the typed view lacks are
    accepted only at peft's default value (regrad then behaves as peft does) and dropped."""
    from peft import LoraConfig

    try:
        LoraConfig(**data)
    except (TypeError, ValueError) as e:
        known = [f.name for f in fields(LoraConfig) if f.init]
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        close = difflib.get_close_matches(bad.group(1), known, n=1) if bad else []
        hint = f" Did you mean: {close[0]}?" if close else ""
        raise ConfigError(f"{where}: peft's LoraConfig rejects it: {type(e).__name__}: {e}{hint}") from None
    view = {f.name for f in fields(PeftConfig)}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in fields(LoraConfig) if f.name not in view and
                (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)}
    for key, value in data.items():
        if key not in view and value != defaults.get(key):
            raise ConfigError(f"{where}: key '{key}' = {value!r} is a peft LoraConfig option that regrad does not "
                              f"implement (plain LoRA, scaling lora_alpha / r); remove it or give peft's default "
                              f"{defaults.get(key)!r}. Supported keys: {sorted(view)}")
    return {k: v for k, v in data.items() if k in view}


@dataclass
class LearnerConfig:
    """The meta-learner: which model, how the inner step is taken (method.md equations 1-3)."""
    model_name_or_path: str = "tiny-llama"
    alpha_mode: AlphaMode = "tie"
    init_alpha: float = 1e-2
    outer_loss: bool = True          # False: ablation, outer objective is the plain LM loss of the task text
    first_order: bool = False        # True: inner gradients without create_graph (no second-order terms)
    blind_context: bool = True       # True: prompt holds only the question (ReGrad); False: ReGrad + ICL
    max_context_len: int = 1536      # passage tokens in training
    bank_context_len: int = 2048     # passage tokens when building the bank
    max_prompt_len: int = 2048       # question (+ passages) tokens
    gamma: float = 1.0               # inference-time scale (05_evaluate's default); training always uses 1
    passage_format: PassageFormat = "text"   # "text": the passage alone (public code); "title_text": "title: text"
    prompt_style: PromptStyle = "instruct"   # "example": + worked questions/answers in the chat (small models)
    context_order: ContextOrder = "rank"     # passages in the prompt: best first (public), or "reversed": best last
    prompt_passages: PromptPassages = "whole"   # "whole" (public); "as_gradient": cut as the gradient's passage
    chat_date: str = "26 Jul 2024"   # date_string given to chat templates that print a date (Llama 3.x's default)
    init_adapter: str | None = None  # a PEFT LoRA adapter folder to start phi from (a warm start); None: fresh

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_literal(self, "alpha_mode", get_args(AlphaMode))
        _check_literal(self, "passage_format", get_args(PassageFormat))
        _check_literal(self, "prompt_style", get_args(PromptStyle))
        _check_literal(self, "context_order", get_args(ContextOrder))
        _check_literal(self, "prompt_passages", get_args(PromptPassages))
        if not self.chat_date.strip():
            raise ConfigError("LearnerConfig.chat_date is empty: give a fixed date such as '26 Jul 2024' (templates "
                              "that print a date would otherwise print today's, and prompts would change by the day)")
        _check_positive(self, "init_alpha", "max_context_len", "bank_context_len", "max_prompt_len")
        _check_positive(self, "gamma", allow_zero=True)


@dataclass
class TrainArgs:
    """Meta-training (defaults: the public configuration, method.md)."""
    learning_rate: float = 4e-4
    alpha_learning_rate: float | None = None   # the step sizes' own lr (None: learning_rate, the public setup)
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    meta_batch_size: int = 16        # tasks per optimizer step
    tasks_per_forward: int = 4       # tasks batched in one forward/backward (memory knob, same result)
    num_train_epochs: int = 1
    max_steps: int | None = None     # stop after this many optimizer steps (None: epochs decide)
    lr_scheduler_type: Scheduler = "linear"
    warmup_ratio: float = 0.1
    warmup_start_factor: float = 0.01
    eta_min: float = 1e-6
    max_grad_norm: float = 0.5
    mixed_precision: Precision = "bf16"
    topk: int = 3
    validation_size: int = 300       # tasks held out of the training file for checkpoint selection
    eval_steps: int = 1000
    metric_for_best_model: BestMetric = "f1"   # validation F1 (higher; generates answers) or meta loss (lower)
    save_steps: int = 1000
    # steps after which the weights are also kept apart (outputs/<run>/steps/<step>/): the points of a learning curve
    keep_steps: list[int] = field(default_factory=list)
    logging_steps: int = 1
    seed: int = 42
    on_nonfinite: OnNonFinite = "error"
    max_train_tasks: int | None = None
    # binding in meta-training: this share of the training tasks of ``distractor_datasets`` get, as their last
    # passage, the best passage of another question asking the same relation with another answer
    distractor_share: float = 0.0
    distractor_datasets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_literal(self, "lr_scheduler_type", get_args(Scheduler))
        if self.mixed_precision == "fp16":
            raise ConfigError("TrainArgs.mixed_precision = 'fp16' is not supported for meta-training: without loss "
                              "scaling fp16 gradients underflow; use 'bf16' (GPUs with bf16) or 'no' (fp32)")
        _check_literal(self, "mixed_precision", get_args(Precision))
        _check_literal(self, "on_nonfinite", get_args(OnNonFinite))
        _check_literal(self, "metric_for_best_model", get_args(BestMetric))
        _check_positive(self, "learning_rate", "alpha_learning_rate", "meta_batch_size", "tasks_per_forward",
                        "num_train_epochs", "max_grad_norm", "topk", "eval_steps", "save_steps", "logging_steps",
                        "max_steps", "max_train_tasks")
        _check_positive(self, "adam_epsilon")
        _check_positive(self, "weight_decay", "eta_min", "validation_size", allow_zero=True)
        if not 0.0 <= self.distractor_share <= 1.0:
            raise ConfigError(f"TrainArgs.distractor_share = {self.distractor_share!r} must be in [0, 1]")
        if self.distractor_share > 0 and not self.distractor_datasets:
            raise ConfigError("TrainArgs.distractor_share > 0 needs distractor_datasets: the training datasets whose "
                              "questions get another question's passage of the same relation, e.g. [\"probe\"]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"TrainArgs.seed = {self.seed!r} must be a whole number from 0 to {2**32 - 1} (the "
                              "range every random generator of the run accepts)")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.keep_steps):
            raise ConfigError(f"TrainArgs.keep_steps = {self.keep_steps!r} must list optimizer steps >= 1")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"TrainArgs.{name} = {getattr(self, name)!r} must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"TrainArgs.warmup_ratio = {self.warmup_ratio!r} must be in [0, 1)")
        if not 0.0 < self.warmup_start_factor <= 1.0:
            raise ConfigError(f"TrainArgs.warmup_start_factor = {self.warmup_start_factor!r} must be in (0, 1]")


@dataclass
class GenerationConfig:
    """Greedy decoding, stop at the first ``stop`` after the answer's first character (method.md equation 4)."""
    max_new_tokens: int = 20
    do_sample: Literal[False] = False
    stop: str = "\n"                 # ends decoding and the extracted answer (the training label still ends in \n)
    batch_size: int = 16

    def __post_init__(self) -> None:
        _check_finite(self)
        if self.do_sample is not False:
            raise ConfigError("GenerationConfig.do_sample must be false: ReGrad decodes greedily")
        if not self.stop:
            raise ConfigError("GenerationConfig.stop is empty: give the string that ends an answer, e.g. \"\\n\"")
        _check_positive(self, "max_new_tokens", "batch_size")


@dataclass
class CptConfig:
    """Continual post-training, the baseline of methods ``cpt`` / ``cpt_rag`` (:mod:`regrad_lib.cpt.continual`), and the
    drift measured after every chunk (:mod:`regrad_lib.cpt.drift`). Not read by meta-training."""
    learning_rate: float = 1e-4      # AdamW, constant (a stream has no known end), no weight decay
    epochs_per_chunk: int = 1        # passes over each chunk of documents before the next chunk arrives
    chunks: int = 4                  # the documents arrive in this many chunks (evaluated questions, in order)
    batch_size: int = 8              # passages per optimizer step
    weights: CptWeights = "lora"     # "lora": a fresh LoRA (the preset's modules) on the base model; "phi": the
                                     # run's meta-trained LoRA; "full": every base weight (small fp32 models)
    objective: CptObjective = "raw"  # "raw": the next-token loss of the passages; "replay": the same, plus the QA
                                     # examples meta-training stepped on (its questions, frame, label and number),
                                     # dealt out over the stream's steps, so CPT learns the answer format too
    seed: int | None = None          # the fresh LoRA's initialisation and each epoch's shuffle; None: the run's seed
    general_passages: int = 256      # held-out corpus passages (distinct articles first) whose NLL measures general
                                     # text (never injected)
    general_questions: int = 200     # general questions: the first this many training rows of the general datasets
                                     # meta-training never used (never selected on the base model's answers)

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_literal(self, "weights", get_args(CptWeights))
        _check_literal(self, "objective", get_args(CptObjective))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ConfigError(f"CptConfig.seed = {self.seed!r} must be None (the run's seed) or an integer >= 0")
        _check_positive(self, "learning_rate", "epochs_per_chunk", "chunks", "batch_size", "general_passages",
                        "general_questions")


@dataclass
class BaselineConfig:
    """The baselines trained on what meta-training used, ``sft`` and ``rag_sft`` (:mod:`regrad_lib.training.sft`):
    their learning rate is chosen on the run's validation slice from ``learning_rates``. Not read by meta-training."""
    learning_rates: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3, 1e-2])

    def __post_init__(self) -> None:
        if not self.learning_rates:
            raise ConfigError("BaselineConfig.learning_rates is empty: give the grid to choose from, e.g. [3e-4, 1e-3]")
        for i, rate in enumerate(self.learning_rates):
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
                raise ConfigError(f"BaselineConfig.learning_rates[{i}] = {rate!r} must be a positive number")
        if len(set(self.learning_rates)) != len(self.learning_rates):
            raise ConfigError(f"BaselineConfig.learning_rates = {self.learning_rates} names a rate twice")


_SECTIONS = {"peft": PeftConfig, "learner": LearnerConfig, "train": TrainArgs, "generation": GenerationConfig,
             "cpt": CptConfig, "baselines": BaselineConfig}


def _coerce(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if cls is PeftConfig:
        data = _validated_by_peft(data, where)
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean: {close[0]}?" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'.{hint} Known keys: {sorted(known)}")
        _check_type(value, hints[key], f"{where}: key '{key}'")
    try:
        return cls(**data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_type(value: Any, hint: Any, where: str) -> None:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return  # checked in __post_init__ with the allowed values listed
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        for item in value:
            _check_type(item, args[0], where)
        return
    if args and origin not in (list, tuple):  # a union: X | Y | None
        if value is None and type(None) in args:
            return
        for arm in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, "
                          f"got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return
    if hint in (int, str, bool) and (type(value) is hint):
        return
    if hint in (int, float, str, bool):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")


@dataclass
class Preset:
    """The configs of a run."""
    name: str
    peft: PeftConfig
    learner: LearnerConfig
    train: TrainArgs
    generation: GenerationConfig
    cpt: CptConfig = field(default_factory=CptConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)

    def to_dict(self) -> dict:
        return {"name": self.name, **{k: asdict(getattr(self, k)) for k in _SECTIONS}}

    def save(self, folder: str | Path) -> None:
        """Write the config files (the seed's file names and ``cpt_config.json``) into ``folder``."""
        for section, filename in {**FILES, **OPTIONAL_FILES}.items():
            artifacts.write_json(Path(folder) / filename, asdict(getattr(self, section)))

    def replace(self, **sections: dict) -> Preset:
        """A copy with some fields changed: ``preset.replace(train={"max_steps": 3})``."""
        return _apply(self, sections, "overrides")


def _apply(preset: Preset, diff: dict, where: str) -> Preset:
    out = {}
    for section in _SECTIONS:
        current = asdict(getattr(preset, section))
        change = diff.get(section) or {}
        if not isinstance(change, dict):
            raise ConfigError(f"{where}: section '{section}' must be an object")
        current.update(change)
        out[section] = _coerce(_SECTIONS[section], current, f"{where} [{section}]")
    unknown = set(diff) - set(_SECTIONS) - {"base", "name"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; allowed: {sorted(_SECTIONS)}")
    return dataclasses.replace(preset, **out)


def available_presets() -> list[str]:
    root = paths.configs_dir()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _preset_folder(name_or_dir: str | Path) -> Path:
    if not isinstance(name_or_dir, (str, Path)):
        raise ConfigError(f"preset = {name_or_dir!r} ({type(name_or_dir).__name__}): give a preset name such as "
                          f"'tiny' (known: {available_presets()}) or a folder holding the four config files")
    candidate = paths.resolve(name_or_dir)
    if candidate.is_dir() and any((candidate / f).exists() for f in (*FILES.values(), "variant.json")):
        return candidate
    if isinstance(name_or_dir, Path) or any(sep in str(name_or_dir) for sep in ("/", "\\")):
        state = "holds none of " + ", ".join([*FILES.values(), "variant.json"]) if candidate.is_dir() else \
            "is not a folder"
        raise ConfigError(f"preset folder {candidate} {state}: give a preset name (known: {available_presets()}) or "
                          "a folder holding the four config files")
    try:
        folder = paths.preset_dir(str(name_or_dir))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if folder.is_dir():
        return folder
    known = available_presets()
    close = difflib.get_close_matches(str(name_or_dir), known, n=1)
    hint = f" Did you mean: {close[0]}?" if close else ""
    raise ConfigError(f"Unknown preset '{name_or_dir}'.{hint} Known presets: {known} (folders under configs/), "
                      "or pass a folder holding the four config files")


def load_preset(name_or_dir: str | Path, overrides: dict | None = None) -> Preset:
    """A preset by name (``configs/<name>``) or folder, with an optional ``{section: {key: value}}`` diff."""
    preset = _load(_preset_folder(name_or_dir), ())
    return _apply(preset, overrides, "overrides") if overrides else preset


def _load(folder: Path, chain: tuple[Path, ...]) -> Preset:
    """The preset in ``folder``; ``chain``: the variant files that led here (a base naming one of them loops)."""
    variant = folder / "variant.json"
    if variant.exists():
        try:
            diff = artifacts.read_json(variant, unique_keys=True)
        except ValueError as e:   # not JSON, not UTF-8, or a key given twice
            raise ConfigError(str(e)) from None
        if not isinstance(diff, dict) or not isinstance(diff.get("base"), str):
            raise ConfigError(f"{variant}: needs a key 'base' naming the preset this variant changes, e.g. "
                              '{"base": "tiny", "train": {...}}')
        try:
            base = _preset_folder(diff["base"])
        except ConfigError as e:
            raise ConfigError(f"{variant}: key 'base': {e}") from None
        if base / "variant.json" in (*chain, variant):
            loop = " -> ".join(str(v) for v in (*chain, variant, base / "variant.json"))
            raise ConfigError(f"{variant}: key 'base' = {diff['base']!r} leads back to itself ({loop}); name a "
                              "preset folder holding the four config files")
        preset = _apply(_load(base, (*chain, variant)), diff, str(variant))
        return dataclasses.replace(preset, name=folder.name)
    sections = {}
    for section, filename in {**FILES, **OPTIONAL_FILES}.items():
        path = folder / filename
        if not path.exists() and section in OPTIONAL_FILES:
            continue
        if not path.exists():
            raise ConfigError(f"{path} not found: a preset folder needs {list(FILES.values())}")
        try:
            data = artifacts.read_json(path, unique_keys=True)
        except ValueError as e:   # not JSON, not UTF-8, or a key given twice (the last would silently win)
            raise ConfigError(str(e)) from None
        sections[section] = _coerce(_SECTIONS[section], data, str(path))
    return Preset(name=folder.name, **sections)
