"""Every accepted config key is used or rejected: a test that changes it and sees the effect, or an error naming
the file and key. ``KEY_TESTS`` names that test for every key; a key added without one fails here."""

import ast
import copy
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from regrad_lib import config, testing
from regrad_lib.answering import harness
from regrad_lib.core import generation, lora, regrad, task_batches
from regrad_lib.core import learner as learner_mod
from regrad_lib.core.learner import Learner
from regrad_lib.data import prompts
from regrad_lib.evaluation import evaluate, learner_once
from regrad_lib.io import artifacts, checkpoint, paths, run_state
from regrad_lib.training import schedule, train

HERE = Path(__file__).parent
KEY_TESTS = {
    "peft.r": "test_config_keys.py::test_rank_and_lora_alpha_set_shapes_and_scale",
    "peft.lora_alpha": "test_config_keys.py::test_rank_and_lora_alpha_set_shapes_and_scale",
    "peft.lora_dropout": "test_config.py::test_bad_values_are_named",
    "peft.target_modules": "test_adapters.py::test_targets_are_the_modules_peft_targets",
    "peft.layers_to_transform": "test_adapters.py::test_targets_are_the_modules_peft_targets",
    "peft.layers_pattern": "test_adapters.py::test_targets_are_the_modules_peft_targets",
    "peft.bias": "test_config_keys.py::test_unsupported_peft_values_are_rejected",
    "peft.task_type": "test_config_keys.py::test_unsupported_peft_values_are_rejected",
    "peft.init_lora_weights": "test_adapters.py::test_init_lora_weights_as_peft_initialises",
    "learner.model_name_or_path": "test_config_keys.py::test_model_name_or_path_is_the_model_loaded",
    "learner.alpha_mode": "test_config_keys.py::test_alpha_mode_and_init_alpha_shape_the_step_sizes",
    "learner.init_alpha": "test_config_keys.py::test_alpha_mode_and_init_alpha_shape_the_step_sizes",
    "learner.outer_loss": "test_train.py::test_outer_loss_false_trains_the_passage_lm_loss_and_leaves_alpha",
    "learner.first_order": "test_config_keys.py::test_first_order_changes_the_meta_gradient",
    "learner.blind_context": "test_config_keys.py::test_blind_context_and_lengths_shape_the_batches",
    "learner.max_context_len": "test_config_keys.py::test_blind_context_and_lengths_shape_the_batches",
    "learner.bank_context_len": "test_config_keys.py::test_bank_context_len_cuts_the_passages_of_the_update",
    "learner.max_prompt_len": "test_config_keys.py::test_blind_context_and_lengths_shape_the_batches",
    "learner.gamma": "test_config_keys.py::test_learner_gamma_is_the_default_gamma",
    "learner.passage_format": "test_prompts.py::test_passage_format_changes_exactly_the_passage_text_everywhere",
    "learner.prompt_style": "test_prompts.py::test_prompt_style_example_frames_every_method_alike",
    "learner.context_order": "test_prompts.py::test_context_order_puts_the_best_passage_last",
    "learner.prompt_passages": "test_frame.py::test_prompt_passages_whole_changes_only_the_prompts_passages",
    "learner.chat_date": "test_prompts.py::test_prompts_do_not_depend_on_the_calendar",
    "learner.init_adapter": "test_adapters.py::test_warm_start_round_trip",
    "train.learning_rate": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.alpha_learning_rate": "test_train.py::test_alpha_learning_rate_reaches_the_optimizer_and_moves_alpha_faster",
    "train.weight_decay": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.adam_beta1": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.adam_beta2": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.adam_epsilon": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.meta_batch_size": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.tasks_per_forward": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.num_train_epochs": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.max_steps": "test_train.py::test_short_run_writes_every_artifact_with_the_log_schema",
    "train.lr_scheduler_type": "test_train.py::test_schedule_matches_torch_and_its_end_points",
    "train.warmup_ratio": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.warmup_start_factor": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.eta_min": "test_train.py::test_schedule_matches_torch_and_its_end_points",
    "train.max_grad_norm": "test_config_keys.py::test_max_grad_norm_clips_the_step",
    "train.mixed_precision": "test_config_keys.py::test_mixed_precision_sets_the_accelerator_dtype",
    "train.topk": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.validation_size": "test_train.py::test_short_run_writes_every_artifact_with_the_log_schema",
    "train.eval_steps": "test_train.py::test_short_run_writes_every_artifact_with_the_log_schema",
    "train.metric_for_best_model": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.save_steps": "test_train.py::test_resume_gives_the_same_next_step_loss",
    "train.distractor_share": ("test_distractors.py::test_the_share_the_datasets_and_"
                               "the_seed_decide_exactly_which_tasks_change"),
    "train.distractor_datasets": ("test_distractors.py::test_the_share_the_datasets_and_"
                                  "the_seed_decide_exactly_which_tasks_change"),
    "baselines.learning_rates": "test_sft.py::test_another_grid_is_refused_unless_overwritten",
    "train.keep_steps": ("test_train.py::test_kept_steps_hold_the_weights_"
                         "of_that_step_and_a_paused_run_resumes_to_the_same_end"),
    "train.logging_steps": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "train.seed": "test_config_keys.py::test_seed_sets_the_lora_initialisation",
    "train.on_nonfinite": "test_train.py::test_skip_mode_counts_skipped_steps_and_never_trains_on_nan",
    "train.max_train_tasks": "test_config_keys.py::test_train_args_reach_the_optimizer_the_schedule_and_the_log",
    "generation.max_new_tokens": "test_config_keys.py::test_generation_keys_drive_the_harness",
    "generation.do_sample": "test_config.py::test_bad_values_are_named",
    "generation.stop": "test_config_keys.py::test_generation_keys_drive_the_harness",
    "generation.batch_size": "test_config_keys.py::test_generation_keys_drive_the_harness",
    "cpt.learning_rate": "test_cpt.py::test_cpt_keys_shape_the_stream",
    "cpt.epochs_per_chunk": "test_cpt.py::test_cpt_keys_shape_the_stream",
    "cpt.chunks": "test_cpt.py::test_cpt_keys_shape_the_stream",
    "cpt.batch_size": "test_cpt.py::test_cpt_keys_shape_the_stream",
    "cpt.weights": "test_cpt.py::test_cpt_weights_choose_what_is_trained",
    "cpt.objective": ("test_cpt.py::test_the_replay_objective_trains_on_exactly_the_qa_examples_meta_training_"
                      "stepped_on"),
    "cpt.seed": "test_cpt.py::test_cpt_seed_sets_the_fresh_lora_and_the_shuffle_and_is_recorded",
    "cpt.general_passages": ("test_cpt.py::test_the_general_set_is_held_out_text_of_distinct_articles_and_training_"
                             "questions_in_file_order"),
    "cpt.general_questions": ("test_cpt.py::test_the_general_set_is_held_out_text_of_distinct_articles_and_training_"
                              "questions_in_file_order"),
}


def test_every_key_names_an_existing_test():
    keys = {f"{section}.{f.name}" for section, cls in config._SECTIONS.items() for f in fields(cls)}
    assert keys == set(KEY_TESTS), f"keys without a test: {sorted(keys - set(KEY_TESTS))}; " \
                                   f"tests of keys that are gone: {sorted(set(KEY_TESTS) - keys)}"
    for key, where in KEY_TESTS.items():
        module, name = where.split("::")
        names = {n.name for n in ast.walk(ast.parse((HERE / module).read_text())) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{key}: {where} does not exist"


# --- peft -------------------------------------------------------------------------------------------------------

def test_rank_and_lora_alpha_set_shapes_and_scale(tiny):
    base, tok = tiny
    deltas = {}
    for r, lora_alpha in ((2, 4), (2, 8)):
        model = copy.deepcopy(base)
        lora.attach(model, config.load_preset("tiny", {"peft": {"r": r, "lora_alpha": lora_alpha}}).peft)
        phi = lora.parameters(model)
        assert {tuple(t.shape)[0 if n.endswith("A") else 1] for n, t in phi.items()} == {r}
        layer = lora.modules(model)["model.layers.2.mlp.gate_proj"]
        with torch.no_grad():
            layer.lora_B.fill_(0.1)
            x = torch.randn(1, 3, 64, generator=torch.Generator().manual_seed(0))
            deltas[lora_alpha] = layer(x) - layer.base(x)
    torch.testing.assert_close(deltas[8], 2 * deltas[4])           # scaling = lora_alpha / r


@pytest.mark.parametrize("diff, pattern", [
    ({"bias": "all"}, r"bias = 'all' is not allowed; choose one of \['none'\]"),
    ({"task_type": "SEQ_CLS"}, r"task_type = 'SEQ_CLS' is not allowed; choose one of \['CAUSAL_LM'\]"),
    ({"task_type": "NOPE"}, r"peft's LoraConfig rejects it: ValueError: Invalid task type: 'NOPE'"),
    ({"init_lora_weights": "pissa"}, r"init_lora_weights = 'pissa' is not supported"),
    ({"lora_rank": 4}, r"peft's LoraConfig rejects it: TypeError: .*unexpected keyword argument 'lora_rank'"),
    ({"layers_pattern": "layers", "layers_to_transform": None}, r"When `layers_pattern` is specified, "
                                                                r"`layers_to_transform` must also be specified"),
    ({"use_dora": True}, r"key 'use_dora' = True is a peft LoraConfig option that regrad does not implement"),
])
def test_unsupported_peft_values_are_rejected(tmp_path, diff, pattern):
    config.load_preset("tiny").save(tmp_path)
    path = tmp_path / "peft_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **diff}))
    with pytest.raises(config.ConfigError, match=pattern) as e:
        config.load_preset(tmp_path)
    assert str(path) in str(e.value)


def test_peft_keys_at_peft_default_are_accepted(tmp_path):
    config.load_preset("tiny").save(tmp_path)
    path = tmp_path / "peft_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_rslora": False, "fan_in_fan_out": False}))
    assert config.load_preset(tmp_path).peft == config.load_preset("tiny").peft


# --- learner ----------------------------------------------------------------------------------------------------

def test_model_name_or_path_is_the_model_loaded(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="Model 'no-such-model' not found"):
        Learner.create(config.load_preset("tiny", {"learner": {"model_name_or_path": "no-such-model"}}))
    from regrad_lib.core import tiny_model
    other = tiny_model.build_model(1024, seed=9)
    other.save_pretrained(tmp_path / "other")
    tiny_model.build_tokenizer().save_pretrained(tmp_path / "other")
    a = Learner.create(config.load_preset("tiny"))
    b = Learner.create(config.load_preset("tiny", {"learner": {"model_name_or_path": str(tmp_path / "other")}}))
    name = "model.embed_tokens.weight"
    assert not torch.equal(a.model.state_dict()[name], b.model.state_dict()[name])


@pytest.mark.parametrize("mode, shapes", [("fix", {()}), ("same", {()}), ("tie", {()}), ("full", {(4, 64), (128, 4),
                                                                                                   (4, 128), (64, 4)})])
def test_alpha_mode_and_init_alpha_shape_the_step_sizes(tiny_model_dir, mode, shapes):
    learner = Learner.create(config.load_preset("tiny", {"learner": {"alpha_mode": mode, "init_alpha": 0.25}}))
    values = dict(learner.alpha.values)
    assert len(values) == (1 if mode in ("fix", "same") else 12)
    assert {tuple(v.shape) for v in values.values()} == shapes
    assert all(bool((v == 0.25).all()) for v in values.values())
    assert all(v.requires_grad is (mode != "fix") for v in values.values())


def test_blind_context_and_lengths_shape_the_batches(tiny):
    tok = tiny[1]
    task = task_batches.Task(0, "What is the capital of France? " * 3, ("Paris",),
                      (("Paris", "Paris is the capital and most populous city of France. " * 4),) * 2, ("1", "2"))
    cfg = lambda **kw: config.load_preset("tiny", {"learner": kw}).learner  # noqa: E731
    blind = task_batches.task_batch(tok, [task], cfg())
    icl = task_batches.task_batch(tok, [task], cfg(blind_context=False))
    assert icl.qa.input_ids.shape[1] > blind.qa.input_ids.shape[1] + 20            # passages in the prompt
    assert blind.passages.input_ids.shape[1] == 64
    assert task_batches.task_batch(tok, [task], cfg(max_context_len=16)).passages.input_ids.shape[1] == 16
    assert task_batches.task_batch(tok, [task], cfg(blind_context=False, max_prompt_len=140)).qa.input_ids.shape[1] < \
        icl.qa.input_ids.shape[1]


def test_first_order_changes_the_meta_gradient(tiny_model_dir):
    grads = {}
    for first in (False, True):
        learner = Learner.create(config.load_preset("tiny", {"learner": {"first_order": first}}))
        with torch.no_grad():
            for n, p in learner.phi.items():
                if n.endswith("lora_B"):
                    p.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
        task = task_batches.Task(0, "Capital of France?", ("Paris",), (("Paris", "Paris is the capital of France."),),
                                 ("1",))
        loss = train.chunk_losses(learner, task_batches.task_batch(learner.tokenizer, [task], learner.preset.learner))
        grads[first] = torch.autograd.grad(loss.sum(), list(learner.phi.values()))
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-9) for a, b in zip(grads[False], grads[True]))


def test_bank_context_len_cuts_the_passages_of_the_update(tiny_model_dir):
    nile = ("Nile", "The Nile is a major north-flowing river in Africa. " * 6)
    task = task_batches.Task(0, "Q?", ("A",), (nile,), ("1",))
    out = {}
    for length in (8, 64):
        learner = Learner.create(config.load_preset("tiny", {"learner": {"bank_context_len": length}}))
        out[length] = generation.online_gradients(learner, [task])
        direct = regrad.summed_gradient(learner.model, learner.phi,
                                        task_batches.passage_batch(learner.tokenizer, task.passages, length))
        torch.testing.assert_close(out[length]["model.layers.2.mlp.up_proj.lora_B"][0],
                                   direct["model.layers.2.mlp.up_proj.lora_B"], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(out[8]["model.layers.2.mlp.up_proj.lora_B"], out[64]["model.layers.2.mlp.up_proj.lora_B"])


# --- a saved run for gamma and the generation keys ------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_run(tiny_model_dir):
    """A saved tiny run with learner.gamma = 3 (non-zero B, alpha 0.5) and a dev file of five questions."""
    testing.saved_trained_run("keys-run", config.load_preset("tiny", {"learner": {"gamma": 3.0}}), seed=2)
    records = [{"test_id": i, "question": f"Which river flows through city {i}?", "answers": [f"river {i}"],
                "passages": [f"City {i} lies on river {i}.", f"River {i} is long.", "Rivers flow to the sea."],
                "passage_ids": [f"{i}a", f"{i}b", "s"], "titles": ["", "", ""], "scores": [3.0, 2.0, 1.0]}
               for i in range(5)]
    artifacts.write_json(paths.augmented_file("keysqa", "dev"), records)
    return Learner.from_run("keys-run"), evaluate.load_tasks("keysqa")


def test_learner_gamma_is_the_default_gamma(saved_run):
    learner, items = saved_run
    assert learner_once.default_gamma("keys-run") == 3.0
    default = harness.run_method("regrad_online", learner, items)
    assert [r["answer_nll"] for r in default] == [r["answer_nll"] for r in
                                                  harness.run_method("regrad_online", learner, items, gamma=3.0)]
    assert [r["answer_nll"] for r in default] != \
        [r["answer_nll"] for r in harness.run_method("regrad_online", learner, items, gamma=1.0)]
    out = evaluate.evaluate("keys-run", "keysqa", ["regrad_online"], learner=learner)
    assert out["regrad_online"]["gamma"] == 3.0
    assert evaluate.EvaluateSettings(run="keys-run", datasets=["keysqa"], methods=["closed_book"]).gamma == 3.0


def test_generation_keys_drive_the_harness(saved_run, monkeypatch):
    learner, items = saved_run
    with_generation = lambda **kw: dataclass_replace(learner, generation=kw)  # noqa: E731
    rows = harness.run_method("closed_book", learner, items)
    short = harness.run_method("closed_book", with_generation(max_new_tokens=1), items)
    assert all(r["generated"].startswith(s["generated"]) for r, s in zip(rows, short))
    assert sum(len(s["generated"]) for s in short) < sum(len(r["generated"]) for r in rows)
    # stop: cut at a character the default run produced after the answer's first one
    row = max(range(len(rows)), key=lambda i: len(rows[i]["generated"].lstrip()))
    text = rows[row]["generated"].lstrip()
    stop = next(c for c in text[1:] if not c.isspace())
    cut = harness.run_method("closed_book", with_generation(stop=stop), items)[row]
    assert text.startswith(cut["generated"].lstrip()) and stop in cut["generated"]
    assert cut["prediction"] == prompts.extract_answer(rows[row]["generated"], stop) != rows[row]["prediction"]
    assert generation.stop_reached(" ab", "b") and not generation.stop_reached(" ab", "\n")
    # batch_size: questions per decoding batch
    calls = []
    original = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    harness.run_method("closed_book", with_generation(batch_size=2), items)
    assert calls == [2, 2, 1]


def dataclass_replace(learner, **sections):
    """The same learner (model, phi, alpha) with some preset sections changed."""
    import dataclasses
    return dataclasses.replace(learner, preset=learner.preset.replace(**sections))


# --- train ------------------------------------------------------------------------------------------------------

def test_train_args_reach_the_optimizer_the_schedule_and_the_log(tiny_model_dir, monkeypatch):
    records = [{"test_id": i, "question": f"Capital of country {i}?", "answers": [f"city {i}"],
                "passages": [f"City {i} is the capital of country {i}.", "Countries have capitals.", "A city."],
                "passage_ids": [f"{i}a", f"{i}b", "c"], "titles": ["", "", ""], "scores": [3.0, 2.0, 1.0]}
               for i in range(6)]
    artifacts.write_json(paths.augmented_file("keystrain", "train_all"), records)
    args = {"num_train_epochs": 2, "meta_batch_size": 2, "tasks_per_forward": 1, "max_train_tasks": 3,
            "validation_size": 2, "topk": 2, "logging_steps": 2, "eval_steps": 2, "metric_for_best_model": "loss",
            "learning_rate": 3e-3, "warmup_ratio": 0.5, "warmup_start_factor": 0.2, "weight_decay": 0.3,
            "adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6}
    preset = config.load_preset("tiny", {"train": args})
    seen = []
    original = train.chunk_losses
    monkeypatch.setattr(train, "chunk_losses", lambda learner, tb: seen.append(tb) or original(learner, tb))
    summary = train.train("keys-train", preset, ["keystrain"])
    # 3 train tasks (max_train_tasks), 2 per step (meta_batch_size), 2 epochs: 2 steps per epoch, 4 steps
    assert (summary["train_tasks"], summary["steps"], summary["tasks"]) == (3, 4, 6)
    assert len(seen) == 6 and all(len(tb) == 1 for tb in seen)               # tasks_per_forward = 1: a chunk a task
    assert all(len(tb.task_of_passage) == 2 for tb in seen)                   # topk = 2 passages a task
    rows = run_state.read_training_log("keys-train")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4]        # logging_steps = 2
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    # warm-up over int(0.5 * 4) = 2 steps from 0.2 * lr, then linear decay: steps 2 and 4 ran at 0-based 1 and 3
    assert lrs == pytest.approx([3e-3 * (0.2 + 0.8 / 2), 3e-3 * 0.5])
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4] and all(r["eval_f1"] is None for r in evals)  # selected on loss
    state = artifacts.read_json(checkpoint.folder(paths.output_dir("keys-train")) / checkpoint.STATE)
    group = state["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["betas"], group["eps"]) == (0.3, [0.8, 0.95], 1e-6)


def test_max_grad_norm_clips_the_step():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    norm = schedule.optimizer_step(torch.optim.SGD([p], lr=1.0), [p], 0.5, lr=1.0)
    assert norm == pytest.approx(5.0) and float(p.detach().norm()) == pytest.approx(0.5, rel=1e-5)


def test_mixed_precision_sets_the_accelerator_dtype():
    for precision, dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
        preset = config.load_preset("tiny", {"train": {"mixed_precision": precision}})
        assert learner_mod.model_dtype(preset, "cuda") == dtype
        assert learner_mod.model_dtype(preset, "cpu") == torch.float32          # CPU always computes in fp32


def test_seed_sets_the_lora_initialisation(tiny_model_dir):
    a = Learner.create(config.load_preset("tiny", {"train": {"seed": 1}}))
    b = Learner.create(config.load_preset("tiny", {"train": {"seed": 2}}))
    c = Learner.create(config.load_preset("tiny", {"train": {"seed": 1}}))
    name = "model.layers.2.mlp.gate_proj.lora_A"
    assert torch.equal(a.phi[name], c.phi[name]) and not torch.equal(a.phi[name], b.phi[name])
    assert not math.isclose(float(a.phi[name].sum()), float(b.phi[name].sum()))
