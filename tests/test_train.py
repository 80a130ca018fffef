"""Meta-training (regrad_lib.training.train): artifacts, log schema, learning, resume, non-finite handling,
schedules."""

import json
import math

import pytest
import torch

from regrad_lib import config
from regrad_lib.core import regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.io import artifacts, checkpoint, paths, run_state
from regrad_lib.training import run_folder, schedule, train, train_data

CITIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima"),
          ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Spain", "Madrid"), ("Norway", "Oslo"), ("Cuba", "Havana")]


def _records(pairs, offset=0):
    return [{"test_id": offset + i, "question": f"What is the capital of {country}?", "answers": [city],
             "passages": [f"{city} is the capital and largest city of {country}.",
                          f"{country} is a country. Its government sits in {city}.",
                          f"The history of {city} goes back many centuries."],
             "passage_ids": [str(100 + 3 * i), str(101 + 3 * i), str(102 + 3 * i)],
             "titles": [city, country, city], "scores": [3.0, 2.0, 1.0]} for i, (country, city) in enumerate(pairs)]


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    """Two small augmented training files (`train_all`) and one with four tasks repeated (`train_rep`)."""
    artifacts.write_json(paths.augmented_file("popqa", "train_all"), _records(CITIES[:6]))
    artifacts.write_json(paths.augmented_file("hotpotqa", "train_all"), _records(CITIES[6:], offset=6))
    # the four tasks three times, each copy its own test_id (task_batches.load refuses one given twice)
    artifacts.write_json(paths.augmented_file("popqa", "train_rep"),
                         [{**r, "test_id": r["test_id"] + 4 * k} for k in range(3) for r in _records(CITIES[:4])])
    return ["popqa", "hotpotqa"]


def _preset(**train_args):
    base = {"max_steps": 3, "meta_batch_size": 2, "tasks_per_forward": 2, "validation_size": 2, "eval_steps": 2,
            "save_steps": 2, "warmup_ratio": 0.0}
    return config.load_preset("tiny", {"train": {**base, **train_args}})


def _train_losses(rows):
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_short_run_writes_every_artifact_with_the_log_schema(data):
    summary = train.train("basic", _preset(), data)
    folder = paths.output_dir("basic")
    for name in ("peft_config.json", "learner_config.json", "train_args.json", "generation_config.json",
                 paths.META_STATE, paths.TRAINING_LOG, "provenance.json", paths.TRAIN_SUMMARY,
                 "checkpoint/state.safetensors", "checkpoint/trainer_state.json"):
        assert (folder / name).is_file(), name
    assert summary["steps"] == 3 and summary["tasks"] == 6
    assert summary["train_tasks"] == 8 and summary["validation_tasks"] == 2
    assert math.isfinite(summary["first_loss"]) and math.isfinite(summary["last_loss"])
    rows = run_state.read_training_log("basic")
    assert all(r["kind"] in ("train", "eval") and isinstance(r["step"], int) for r in rows)
    train_rows = [r for r in rows if r["kind"] == "train"]
    eval_rows = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    assert [r["step"] for r in eval_rows] == [0, 2, 3]
    for r in train_rows:
        assert {"loss", "lr", "grad_norm", "tasks_seen", "epoch", "alpha", "skipped_nonfinite", "elapsed_s"} <= set(r)
        assert len(r["alpha"]) == 12 and all(isinstance(v, float) for v in r["alpha"].values())
        assert r["skipped_nonfinite"] == 0 and r["grad_norm"] > 0
    for r in eval_rows:
        assert {"eval_loss", "eval_em", "eval_f1", "n", "best"} <= set(r) and r["n"] == 2
        assert r["eval_f1"] is not None and 0 <= r["eval_f1"] <= 100   # the tiny preset selects on F1
    assert sum(r["best"] for r in eval_rows) >= 1 and eval_rows[0]["best"]
    # each evaluation is marked best exactly when it beats every earlier one (F1 higher, ties: loss lower)
    for i, r in enumerate(eval_rows):
        beats = all((-r["eval_f1"], r["eval_loss"]) < (-e["eval_f1"], e["eval_loss"]) for e in eval_rows[:i])
        assert r["best"] == beats, r
    # the saved meta state is the best evaluation's: re-evaluating it reproduces that loss
    best = [r for r in eval_rows if r["best"]][-1]
    learner = Learner.from_run("basic")
    assert learner.meta_hash() != Learner.create(_preset()).meta_hash() or best["step"] == 0
    tasks = train_data.split_tasks(train_data.load_tasks(data, "train_all", 3), 2, 42).validation
    assert train.evaluate(learner, tasks)["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-5)
    assert config.load_preset(folder).train.max_steps == 3
    alpha = run_state.read_alpha("basic")
    assert len(alpha) == 12 and all(math.isfinite(v) and v > 0 for v in alpha.values())


def test_configure_applies_only_given_parameters():
    base = config.load_preset("smollm2-135m-instruct")
    same = train.configure("smollm2-135m-instruct")
    assert same.to_dict() == base.to_dict()
    cfg = train.configure("tiny", blind_context=False, seed=7, max_steps=5, limit=10)
    chosen = (cfg.learner.blind_context, cfg.train.seed, cfg.train.max_steps, cfg.train.max_train_tasks)
    assert chosen == (False, 7, 5, 10)


def test_finished_run_is_kept_or_refused_never_silently_overwritten(data):
    first = train.train("again", _preset(max_steps=1), data)
    state = (paths.output_dir("again") / "meta_state.safetensors").read_bytes()
    kept = train.train("again", _preset(max_steps=1), data)          # a re-run pipeline keeps finished work
    assert kept["status"] == "kept" and kept["steps"] == first["steps"]
    assert (paths.output_dir("again") / "meta_state.safetensors").read_bytes() == state
    with pytest.raises(FileExistsError, match=r"other settings \(train.max_steps\).*overwrite=True"):
        train.train("again", _preset(max_steps=2), data)
    summary = train.train("again", _preset(max_steps=2), data, overwrite=True)
    assert summary["steps"] == 2


def test_missing_augmented_file_names_the_notebook(data):
    with pytest.raises(FileNotFoundError, match=r"nosuch/train_all.json not found.*02_augment.*dataset='nosuch'"):
        train.train("missing", _preset(), ["popqa", "nosuch"])


def test_meta_loss_decreases_on_a_repeated_task_set(data):
    preset = _preset(max_steps=8, meta_batch_size=4, tasks_per_forward=4, validation_size=0, learning_rate=1e-2,
                     max_grad_norm=10.0)
    summary = train.train("learns", preset, ["popqa"], train_file="train_rep", limit=4)
    losses = list(_train_losses(run_state.read_training_log("learns")).values())
    assert len(losses) == 8
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.3, losses
    assert summary["last_loss"] == losses[-1]


def test_resume_gives_the_same_next_step_loss(data, monkeypatch, crash_on_call):
    preset = _preset(max_steps=4, save_steps=2, learning_rate=5e-3)
    train.train("straight", preset, data)
    reference = run_state.read_training_log("straight")

    crash_on_call(train, "meta_step", 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train("resumed", preset, data)
    assert artifacts.read_json(checkpoint.folder(paths.output_dir("resumed")) / checkpoint.STATE)["step"] == 2
    monkeypatch.undo()
    train.train("resumed", preset, data)
    resumed = run_state.read_training_log("resumed")
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in reference]
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for step, loss in _train_losses(reference).items():
        assert abs(_train_losses(resumed)[step] - loss) < 1e-6, step
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in resumed][-1] == pytest.approx(strip[-1])


def test_keyboard_interrupt_saves_a_checkpoint_and_resumes(data, monkeypatch):
    preset = _preset(max_steps=3, save_steps=100, eval_steps=100)
    original, calls = train.meta_step, {"n": 0}

    def interrupt_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "meta_step", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        train.train("interrupted", preset, data)
    monkeypatch.setattr(train, "meta_step", original)
    with pytest.raises(FileExistsError, match="unfinished run"):
        train.train("interrupted", preset, data, resume=False)
    with pytest.raises(ValueError, match=r"other settings \(train.learning_rate\)"):
        train.train("interrupted", _preset(max_steps=3, save_steps=100, eval_steps=100, learning_rate=0.5), data)
    summary = train.train("interrupted", preset, data)
    assert summary["steps"] == 3
    assert [r["step"] for r in run_state.read_training_log("interrupted") if r["kind"] == "train"] == [1, 2, 3]


def _poison(monkeypatch, bad_steps, where="loss"):
    """Make the training meta loss (or its gradient) non-finite on the given 1-based training calls."""
    original, calls = regrad.meta_losses, {"n": 0}

    def wrapped(model, phi, alpha, tasks, *, first_order=False, precision="no"):
        losses = original(model, phi, alpha, tasks, first_order=first_order, precision=precision)
        if first_order:  # the validation pass
            return losses
        calls["n"] += 1
        if calls["n"] not in bad_steps:
            return losses
        if where == "loss":
            return losses * float("nan")
        return losses + _nan_grad(next(iter(phi.values())))

    monkeypatch.setattr(regrad, "meta_losses", wrapped)


def _nan_grad(tensor):
    """Zero in value, NaN in its gradient w.r.t. ``tensor`` (the unselected branch of a where)."""
    return torch.where(torch.tensor(True), torch.zeros(()), torch.sqrt(-tensor.abs().sum() - 1))


def test_nonfinite_loss_stops_naming_the_step_and_tasks(data, monkeypatch):
    _poison(monkeypatch, {2})
    with pytest.raises(train.NonFiniteError, match=r"step 2: non-finite meta loss of (popqa|hotpotqa):\d+ 'What is"):
        train.train("nan_error", _preset(), data)


def test_nonfinite_gradient_stops(data, monkeypatch):
    _poison(monkeypatch, {1}, where="grad")
    with pytest.raises(train.NonFiniteError, match=r"step 1: non-finite gradient"):
        train.train("nan_grad", _preset(), data)


def test_skip_mode_counts_skipped_steps_and_never_trains_on_nan(data, monkeypatch):
    _poison(monkeypatch, {1, 3})
    summary = train.train("nan_skip", _preset(max_steps=4, on_nonfinite="skip"), data)
    rows = [r for r in run_state.read_training_log("nan_skip") if r["kind"] == "train"]
    assert [r["skipped"] for r in rows] == [True, False, True, False]
    assert [r["skipped_nonfinite"] for r in rows] == [1, 1, 2, 2]
    assert rows[0]["loss"] is None and rows[1]["loss"] is not None
    assert summary["skipped_nonfinite"] == 2
    learner = Learner.from_run("nan_skip")
    assert all(torch.isfinite(p).all() for p in learner.phi.values())


def test_first_order_and_fixed_alpha_train(data):
    preset = _preset(max_steps=1, validation_size=0).replace(learner={"first_order": True, "alpha_mode": "fix"})
    summary = train.train("fixed", preset, data)
    assert summary["steps"] == 1 and math.isfinite(summary["last_loss"])


def test_outer_loss_false_trains_the_passage_lm_loss_and_leaves_alpha(data):
    preset = _preset(max_steps=2, validation_size=0).replace(learner={"outer_loss": False})
    learner = Learner.create(preset)
    batch = train_data.split_tasks(train_data.load_tasks(data, "train_all", 3), 0, 42).train
    first = [batch[i] for i in train_data.epoch_order(len(batch), 42, 0)[:2]]
    tb = task_batches.task_batch(learner.tokenizer, first, preset.learner)
    expected = float(regrad.passage_losses(learner.model, learner.phi, tb).mean().detach())
    summary = train.train("plain_lm", preset, data)
    assert summary["first_loss"] == pytest.approx(expected, rel=1e-6)
    trained = Learner.from_run("plain_lm")
    assert all(torch.equal(v, learner.alpha[n].detach()) for n, v in trained.alpha.tensors().items())  # never moved
    assert any(not torch.equal(trained.phi[n], learner.phi[n]) for n in learner.phi)  # phi did


def test_alpha_learning_rate_reaches_the_optimizer_and_moves_alpha_faster(data):
    """alpha gets its own lr (same schedule); the default keeps the public setup (one lr for both)."""
    preset = _preset(max_steps=2, validation_size=0, learning_rate=1e-3)
    default, _ = schedule.make_optimizer(Learner.create(preset))
    assert [g["name"] for g in default.param_groups] == ["phi", "alpha"]
    rates = schedule.group_rates(1, preset.train, 2)
    assert rates["alpha"] == rates["phi"]
    fast = preset.replace(train={"alpha_learning_rate": 2e-2})
    rates = schedule.group_rates(1, fast.train, 2)
    assert rates["alpha"] == pytest.approx(20 * rates["phi"])
    moved = {}
    for name, p in (("slow", preset), ("fast", fast)):
        train.train(f"alpha_{name}", p, data)
        log = [r for r in run_state.read_training_log(f"alpha_{name}") if r["kind"] == "train"]
        assert log[-1]["alpha_lr"] == pytest.approx(schedule.group_rates(1, p.train, 2)["alpha"])
        moved[name] = max(abs(v - 1e-2) for v in log[-1]["alpha"].values())
    assert moved["fast"] > 5 * moved["slow"] > 0
    with pytest.raises(config.ConfigError, match="alpha_learning_rate"):
        preset.replace(train={"alpha_learning_rate": -1.0})


def test_cpu_precision_policy(monkeypatch):
    """bf16 autocast for gradient work on a CPU only where bf16 is native; evaluation on a CPU always fp32."""
    from regrad_lib.core import learner as learner_module

    preset = _preset().replace(train={"mixed_precision": "bf16"})
    fake = Learner(None, None, preset, {}, None, torch.device("cpu"))
    monkeypatch.setattr(learner_module, "cpu_has_bf16", lambda: True)
    assert (fake.precision, fake.eval_precision) == ("bf16", "no")
    monkeypatch.setattr(learner_module, "cpu_has_bf16", lambda: False)
    assert (fake.precision, fake.eval_precision) == ("no", "no")
    fp32 = Learner(None, None, _preset(), {}, None, torch.device("cpu"))
    assert fp32.precision == "no"


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_matches_torch_and_its_end_points(kind):
    args = config.TrainArgs(learning_rate=4e-4, lr_scheduler_type=kind, warmup_ratio=0.1, warmup_start_factor=0.01,
                            eta_min=1e-6)
    total, warmup = 50, 5
    assert schedule.learning_rate(0, args, total) == pytest.approx(4e-6)
    assert schedule.learning_rate(warmup, args, total) == pytest.approx(4e-4)
    assert schedule.learning_rate(total, args, total) == pytest.approx(0.0 if kind == "linear" else 1e-6)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    main = (torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total - warmup)
            if kind == "linear" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, total - warmup, eta_min=1e-6))
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[warmup])
    for step in range(total):
        assert schedule.learning_rate(step, args, total) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6), step
        opt.step()
        sched.step()


def test_validation_slice_is_seeded_and_disjoint(data):
    all_tasks = train_data.load_tasks(data, "train_all", 3)
    a = train_data.split_tasks(all_tasks, 3, seed=42)
    b = train_data.split_tasks(all_tasks, 3, seed=42)
    assert a.fingerprint() == b.fingerprint()
    assert not {id(t) for t in a.validation} & {id(t) for t in a.train}
    assert len(a.train) + len(a.validation) == len(all_tasks) == 10
    assert train_data.split_tasks(all_tasks, 3, seed=1).fingerprint() != a.fingerprint()
    with pytest.raises(ValueError, match="validation_size=10"):
        train_data.split_tasks(all_tasks, 10, seed=42)
    json.dumps([t.extra for t in all_tasks])


def test_best_checkpoint_rule():
    row = lambda f1, loss: {"eval_f1": f1, "eval_loss": loss}       # noqa: E731
    assert run_folder.is_better(row(50.0, 2.0), None, "f1")
    better = run_folder.is_better
    assert better(row(60.0, 3.0), row(50.0, 2.0), "f1") and not better(row(40.0, 1.0), row(50.0, 2.0), "f1")
    assert better(row(50.0, 1.0), row(50.0, 2.0), "f1") and not better(row(50.0, 2.0), row(50.0, 2.0), "f1")
    assert better(row(10.0, 1.0), row(90.0, 2.0), "loss") and not better(row(90.0, 3.0), row(10.0, 2.0), "loss")
    assert run_folder.is_better(row(None, 1.0), row(None, 2.0), "f1")           # no F1: the loss decides


def test_meta_step_gradient_is_the_mean_over_the_batch(data):
    """The step's gradient (norm before clipping) and loss are the mean of the tasks' one-by-one meta-gradients
    and losses, not their sum."""
    preset = _preset(tasks_per_forward=2, max_grad_norm=1e6)
    learner = Learner.create(preset)
    batch = train_data.load_tasks(data, "train_all", 3)[:3]
    optimizer, params = schedule.make_optimizer(learner)
    grads, losses = [], []
    for task in batch:
        tb = task_batches.task_batch(learner.tokenizer, [task], preset.learner)
        loss = train.chunk_losses(learner, tb).sum()
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
        losses.append(loss.item())
    mean = [sum(g[i] if g[i] is not None else torch.zeros_like(p) for g in grads) / len(batch)
            for i, p in enumerate(params)]
    want = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in mean])))
    loss, grad_norm, problem, _ = train.meta_step(learner, optimizer, params, batch, 0.0)
    assert problem is None
    assert loss == pytest.approx(sum(losses) / len(batch), rel=1e-5)
    assert grad_norm == pytest.approx(want, rel=1e-4)


def test_kept_steps_hold_the_weights_of_that_step_and_a_paused_run_resumes_to_the_same_end(data):
    """keep_steps writes the weights after each named step; stop_after pauses (unfinished) and training again
    resumes, and the kept weights equal those of an uninterrupted run of the same schedule."""
    whole = train.train("kept-whole", _preset(max_steps=4, keep_steps=[1, 3]), data)
    assert whole["steps"] == 4
    assert sorted(p.parent.name for p in (paths.output_dir("kept-whole") / "steps").glob("*/" + paths.META_STATE)) \
        == ["000001", "000003"]
    paused = train.train("kept-paused", _preset(max_steps=4, keep_steps=[1, 3]), data, stop_after=2)
    assert paused == {"status": "paused", "step": 2, "total_steps": 4}
    assert not (paths.output_dir("kept-paused") / paths.TRAIN_SUMMARY).exists()
    assert not paths.kept_step_state("kept-paused", 3).exists()
    train.train("kept-paused", _preset(max_steps=4, keep_steps=[1, 3]), data)
    for step in (1, 3):
        from regrad_lib.io.run_state import read_state
        left = read_state(paths.kept_step_state("kept-whole", step))
        right = read_state(paths.kept_step_state("kept-paused", step))
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), step
    # the step-1 weights differ from the step-3 weights (the snapshot is of its own step, not the last)
    one, three = (read_state(paths.kept_step_state("kept-whole", s)) for s in (1, 3))
    assert any(not torch.equal(one[k], three[k]) for k in one if k.startswith("phi."))
