"""The fine-tuned baselines sft and rag_sft (regrad_lib.training.sft): trained on exactly the tasks, frame and label
meta-training used, resumable, their learning rate chosen on the validation slice, answered by the harness."""

import dataclasses

import pytest
import torch

from regrad_lib import config
from regrad_lib.answering import harness
from regrad_lib.core import task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.data import prompts
from regrad_lib.evaluation import evaluate, results
from regrad_lib.io import artifacts, paths, result_files, tensorfile
from regrad_lib.training import sft, train
from regrad_lib.training.train_data import TrainData

CITIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima"),
          ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Spain", "Madrid"), ("Norway", "Oslo"), ("Cuba", "Havana")]


def _records(pairs, offset=0):
    return [{"test_id": offset + i, "question": f"What is the capital of {country}?", "answers": [city],
             "passages": [f"{city} is the capital and largest city of {country}.",
                          f"{country} is a country. Its government sits in {city}.",
                          f"The history of {city} goes back many centuries."],
             "passage_ids": [str(500 + 3 * (offset + i)), str(501 + 3 * (offset + i)), str(502 + 3 * (offset + i))],
             "titles": [city, country, city], "scores": [3.0, 2.0, 1.0]} for i, (country, city) in enumerate(pairs)]


def _preset(**train_args):
    base = {"max_steps": 4, "meta_batch_size": 2, "tasks_per_forward": 2, "validation_size": 2, "eval_steps": 2,
            "save_steps": 2, "warmup_ratio": 0.0}
    return config.load_preset("tiny", {"train": {**base, **train_args},
                                       "baselines": {"learning_rates": [1e-3, 1e-2]}})


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    """A meta-trained tiny run on ten capital questions (8 training tasks, 2 validation), recording which tasks
    each meta step took."""
    artifacts.write_json(paths.augmented_file("sftqa", "train_all"), _records(CITIES))
    stepped = []
    original = train.meta_step

    def recording(learner, optimizer, params, batch, lr):
        stepped.append([t.test_id for t in batch])
        return original(learner, optimizer, params, batch, lr)

    train.meta_step = recording
    try:
        train.train("sft-run", _preset(), ["sftqa"])
    finally:
        train.meta_step = original
    return {"name": "sft-run", "stepped": stepped}


@pytest.fixture(scope="module")
def learner(run):
    return Learner.from_run(run["name"])


@pytest.fixture()
def own_baselines(request, monkeypatch):
    """This test's own baseline folders (``outputs/<run>/baselines-<test>/<method>/``): the module's tests train
    the sft baseline of one run, and one that counts what is trained, or changes the grid, must not find another
    test's baseline there (kept, nothing trained) in another order."""
    name = request.node.name
    monkeypatch.setattr(paths, "baseline_dir", lambda r, m: paths.output_dir(r) / f"baselines-{name}" / m)


def _recorded_training(monkeypatch):
    seen = []
    original = sft.answer_losses

    def record(learner, phi, tasks, method, grad=False):
        if grad:
            seen.append((method, [t.test_id for t in tasks]))
        return original(learner, phi, tasks, method, grad)

    monkeypatch.setattr(sft, "answer_losses", record)
    return seen


def test_each_baseline_trains_on_exactly_the_tasks_meta_training_stepped_on(run, learner, monkeypatch, own_baselines):
    seen = _recorded_training(monkeypatch)
    selected = sft.train(run["name"], "sft", learner)
    assert selected["steps"] == 4 and selected["selection"] == "best"
    per_rate = len(seen) // 2
    assert len(seen) == 2 * len(run["stepped"])            # two rates of the grid, one forward per step (2 tasks)
    for rate in range(2):
        assert [ids for _, ids in seen[rate * per_rate:(rate + 1) * per_rate]] == run["stepped"]
    assert sum(len(ids) for ids in run["stepped"]) == 4 * 2   # steps × meta_batch_size examples, as meta-training
    validation = {t.test_id for t in sft.run_data(run["name"], learner).validation}
    assert not validation & {i for ids in run["stepped"] for i in ids}


def test_the_frame_and_label_are_meta_trainings_and_only_rag_sft_reads_passages(learner):
    task = task_batches.from_record(_records(CITIES[:1])[0], 3)
    tok = learner.tokenizer
    for method, with_passages in (("sft", False), ("rag_sft", True)):
        batch = sft.examples(learner, [task], method)
        labelled = [int(i) for i, lab in zip(batch.input_ids[0], batch.labels[0]) if lab != prompts.IGNORE]
        assert labelled == prompts.answer_ids(tok, "Paris")                 # " Paris" + end of turn, nothing else
        text = tok.decode(batch.input_ids[0])
        assert ("largest city of France" in text) is with_passages
        assert "What is the capital of France?" in text


def test_the_learning_rate_is_chosen_on_validation_by_the_runs_rule(run, learner, monkeypatch):
    rows = {1e-3: {"step": 4, "eval_loss": 2.5, "eval_em": None, "eval_f1": 10.0},
            1e-2: {"step": 2, "eval_loss": 1.75, "eval_em": None, "eval_f1": 5.0}}

    def fake_point(learner, data, method, rate, steps, folder, selection):
        folder.mkdir(parents=True, exist_ok=True)
        tensorfile.save(folder / sft.WEIGHTS, {n: torch.full_like(t, rate) for n, t in learner.phi.items()})
        return {"learning_rate": rate, "validation": rows[rate]}

    monkeypatch.setattr(sft, "train_point", fake_point)
    monkeypatch.setattr(paths, "baseline_dir", lambda r, m: paths.output_dir(r) / "baselines-choice" / m)
    assert learner.preset.train.metric_for_best_model == "f1"                           # the tiny preset's rule
    assert sft.train(run["name"], "rag_sft", learner)["learning_rate"] == 1e-3          # F1 10 > 5
    trained, _ = sft.learner_for(run["name"], "rag_sft", learner)
    assert all(torch.equal(t, torch.full_like(t, 1e-3)) for t in trained.phi.values())
    by_loss = dataclasses.replace(learner, preset=learner.preset.replace(train={"metric_for_best_model": "loss"}))
    monkeypatch.setattr(paths, "baseline_dir", lambda r, m: paths.output_dir(r) / "baselines-loss" / m)
    assert sft.train(run["name"], "rag_sft", by_loss)["learning_rate"] == 1e-2          # loss 1.75 < 2.5


def test_a_tiny_model_fine_tuned_on_a_hand_made_set_answers_it(learner, tmp_path):
    """The random tiny model cannot memorise four different capitals through a rank-4 LoRA, but it learns one
    answer shared by a hand-made set: after fine-tuning it answers every question of the set with it, and the
    answer's NLL falls."""
    records = _records(CITIES[:4])
    for r in records:
        r["question"], r["answers"] = r["question"].replace("capital", "password"), ["Rome"]
    tasks = [task_batches.from_record(r, 3) for r in records]
    data = TrainData(train=tasks * 10, validation=tasks)
    fast = dataclasses.replace(learner, preset=learner.preset.replace(
        train={"meta_batch_size": 4, "tasks_per_forward": 4, "max_steps": 40, "eval_steps": 40, "save_steps": 40,
               "warmup_ratio": 0.0}))
    before = sft.answer_losses(fast, fast.phi, tasks, "sft").mean()
    assert [r["prediction"] for r in harness.run_method("sft", fast, tasks)] != ["Rome"] * 4
    result = sft.train_point(fast, data, "sft", 0.1, 40, tmp_path / "point", "last")
    weights, _ = tensorfile.load(tmp_path / "point" / sft.WEIGHTS, required=True, fix="-")
    trained = dataclasses.replace(fast, phi=weights)
    after = sft.answer_losses(trained, trained.phi, tasks, "sft").mean()
    assert after < before - 0.5 and result["validation"]["eval_loss"] == pytest.approx(float(after), rel=1e-5)
    assert [r["prediction"] for r in harness.run_method("sft", trained, tasks)] == ["Rome"] * 4


def test_a_killed_training_resumes_to_the_same_weights(learner, tmp_path, monkeypatch, crash_on_call):
    tasks = [task_batches.from_record(r, 3) for r in _records(CITIES)]
    data = TrainData(train=tasks[:8], validation=tasks[8:])
    sft.train_point(learner, data, "rag_sft", 1e-2, 4, tmp_path / "straight", "best")
    crash_on_call(sft, "answer_losses", 7)           # step 4's forward, after the checkpoint of step 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft.train_point(learner, data, "rag_sft", 1e-2, 4, tmp_path / "resumed", "best")
    assert not (tmp_path / "resumed" / sft.RESULT).exists()
    monkeypatch.undo()
    sft.train_point(learner, data, "rag_sft", 1e-2, 4, tmp_path / "resumed", "best")
    a, _ = tensorfile.load(tmp_path / "straight" / sft.WEIGHTS, required=True, fix="-")
    b, _ = tensorfile.load(tmp_path / "resumed" / sft.WEIGHTS, required=True, fix="-")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert artifacts.read_json(tmp_path / "straight" / sft.RESULT) == artifacts.read_json(tmp_path / "resumed" /
                                                                                          sft.RESULT)


def test_another_grid_is_refused_unless_overwritten(run, learner, own_baselines):
    sft.train(run["name"], "sft", learner)
    other = dataclasses.replace(learner, preset=learner.preset.replace(baselines={"learning_rates": [1e-3]}))
    with pytest.raises(FileExistsError, match="other settings .*learning_rates"):
        sft.train(run["name"], "sft", other)
    assert sft.train(run["name"], "sft", other, overwrite=True)["grid"][0]["learning_rate"] == 1e-3
    sft.train(run["name"], "sft", learner, overwrite=True)


def test_evaluate_answers_with_the_baselines_weights_and_records_them(run, learner):
    artifacts.write_json(paths.augmented_file("sftqa", "dev"), _records(CITIES[:3], offset=100))
    out = evaluate.evaluate(run["name"], "sftqa", ["sft", "rag_sft", "no_update"], learner=learner)
    saved = artifacts.read_json(results.method_files(run["name"], "sftqa", "rag_sft")[1])
    assert saved["baseline"] == {"method": "rag_sft", "learning_rates": [1e-3, 1e-2], "steps": 4, "selection": "best"}
    assert "baseline" not in artifacts.read_json(results.method_files(run["name"], "sftqa", "no_update")[1])
    nll = {m: [r["answer_nll"] for r in result_files.method_predictions(run["name"], "sftqa", m)] for m in out}
    assert nll["sft"] != nll["no_update"] and nll["rag_sft"] != nll["sft"]
    trained, _ = sft.learner_for(run["name"], "sft", learner)
    direct = harness.run_method("sft", trained, evaluate.load_tasks("sftqa"))
    assert [r["answer_nll"] for r in direct] == pytest.approx(nll["sft"], abs=1e-6)


def test_kept_steps_become_runs_whose_baselines_share_one_training(run, monkeypatch):
    """A learning curve's points: each kept step is a run of its own (kept_steps.point_run), and the baselines of
    the points are one training of the parent's schedule, taken at each kept step (not one training per point)."""
    from regrad_lib.training import kept_steps

    train.train("sft-curve", _preset(keep_steps=[2, 4]), ["sftqa"])
    assert kept_steps.kept_steps("sft-curve") == [2, 4]
    names = [kept_steps.point_run("sft-curve", s, baselines={"learning_rates": [1e-2]}) for s in (2, 4)]
    assert names == ["sft-curve-002", "sft-curve-004"]
    assert kept_steps.point_run("sft-curve", 2, baselines={"learning_rates": [1e-2]}) == names[0]     # kept
    point = Learner.from_run(names[0])
    assert point.meta_hash() != Learner.from_run(names[1]).meta_hash()
    assert sft.trained_like(names[0]) == (2, "last")
    seen = _recorded_training(monkeypatch)
    for name in names:
        sft.train(name, "sft", Learner.from_run(name))
    assert len(seen) == 4                                    # steps 1-2 once, then 3-4 continued: not 2 + 4
    weights = [tensorfile.load(paths.baseline_dir(n, "sft") / sft.WEIGHTS, required=True, fix="-")[0] for n in names]
    straight = {}
    for steps in (2, 4):          # the same schedule trained in one go: identical weights
        folder = paths.output_dir("sft-curve") / f"straight-{steps}"
        sft.train_point(point, sft.run_data("sft-curve", point), "sft", 1e-2, steps, folder, "last")
        straight[steps] = tensorfile.load(folder / sft.WEIGHTS, required=True, fix="-")[0]
    for got, steps in zip(weights, (2, 4)):
        assert all(torch.equal(got[k], straight[steps][k]) for k in got), steps
    assert artifacts.read_json(paths.baseline_selection(names[1], "sft"))["kept_from"] == "sft-curve"
    with pytest.raises(ValueError, match="one learning rate"):
        kept_steps.point_run("sft-curve", 2, overwrite=True)          # the run's grid of two rates
        sft.train(names[0], "sft", Learner.from_run(names[0]))


def test_a_grid_that_gains_rates_keeps_the_rates_already_trained(run, learner, monkeypatch, own_baselines):
    sft.train(run["name"], "sft", learner)                             # the grid 1e-3, 1e-2
    seen = _recorded_training(monkeypatch)
    wider = dataclasses.replace(learner, preset=learner.preset.replace(
        baselines={"learning_rates": [1e-3, 1e-2, 3e-2]}))
    selected = sft.train(run["name"], "sft", wider)
    assert len(seen) == 4                                               # only the new rate's 4 steps trained
    assert [g["learning_rate"] for g in selected["grid"]] == [1e-3, 1e-2, 3e-2]
    narrower = dataclasses.replace(learner, preset=learner.preset.replace(baselines={"learning_rates": [1e-2]}))
    with pytest.raises(FileExistsError, match="learning_rates"):       # losing a rate is another request
        sft.train(run["name"], "sft", narrower)
    sft.train(run["name"], "sft", learner, overwrite=True)
