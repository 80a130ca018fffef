"""The mixed-documents ablation (public code: ``encode.py --mixed p``) and the top-k sweep's banks: exactly the last
⌊k·p⌋ passages replaced by the next question's best ones (a hand-made case), 04 and 05 agreeing on them, sweeps."""

import pytest
import torch

from regrad_lib import config
from regrad_lib.answering import harness
from regrad_lib.bank import encode, reader
from regrad_lib.core import task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, results, sweeps
from regrad_lib.io import artifacts, paths, result_files
from regrad_lib.reporting import analysis, plots

RUN, DATASET = "mixtest", "mixqa"
TEXT = {"a": "Alder trees grow near rivers in cold places.", "b": "Birch bark is white and peels in thin sheets.",
        "c": "Cedar wood smells sweet and resists decay.", "d": "Dogwood flowers open early in the spring."}


def _task(letter, i):
    """Question ``letter`` with passages ``<letter>0 <letter>1 <letter>2`` (ids and titles name them)."""
    return task_batches.Task(i, f"Question {letter}?", (letter,), tuple((f"{letter}{j}", f"{TEXT[letter]} ({j})")
                                                                for j in range(3)),
                      tuple(f"{letter}{j}" for j in range(3)))


def _ids(items):
    return [list(t.passage_ids) for t in items]


HAND = [_task(x, i) for i, x in enumerate("abcd")]


@pytest.mark.parametrize("mixed, expected", [
    (0.0, [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0", "c1", "c2"], ["d0", "d1", "d2"]]),
    (0.33, [["a0", "a1", "a2"], ["b0", "b1", "b2"], ["c0", "c1", "c2"], ["d0", "d1", "d2"]]),   # ⌊0.99⌋ = 0
    (0.34, [["a0", "a1", "b0"], ["b0", "b1", "c0"], ["c0", "c1", "d0"], ["d0", "d1", "a0"]]),
    (2 / 3, [["a0", "b0", "b1"], ["b0", "c0", "c1"], ["c0", "d0", "d1"], ["d0", "a0", "a1"]]),
    (1.0, [["b0", "b1", "b2"], ["c0", "c1", "c2"], ["d0", "d1", "d2"], ["a0", "a1", "a2"]]),
])
def test_mix_replaces_exactly_the_last_passages_by_the_next_questions_best(mixed, expected):
    out = task_batches.mix(HAND, mixed, 3)
    assert _ids(out) == expected
    for task, new in zip(HAND, out):        # only the passages change; titles and texts travel with their ids
        assert (new.test_id, new.question, new.answers) == (task.test_id, task.question, task.answers)
        assert [title for title, _ in new.passages] == list(new.passage_ids)
    assert task_batches.mixed_count(3, mixed) == sum(not pid.startswith("a") for pid in expected[0])


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_mixed_share_is_checked(bad):
    with pytest.raises(ValueError, match="mixed="):
        task_batches.mixed_count(3, bad)
    with pytest.raises(ValueError, match="at least two questions"):
        task_batches.mix(HAND[:1], 0.5, 3)


def _record(task):
    return {"test_id": task.test_id, "question": task.question, "answers": list(task.answers),
            "passages": [text for _, text in task.passages], "titles": [t for t, _ in task.passages],
            "passage_ids": list(task.passage_ids), "scores": [3.0, 2.0, 1.0]}


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    """A saved 'trained' tiny run, the hand-made questions as a dev file, a bank of the first 2 questions that also
    holds their mixed passages up to p = 2/3, and a top-2 bank."""
    preset = config.load_preset("tiny")
    learner = Learner.create(preset, "cpu")
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
        for v in learner.alpha.values.values():
            v.fill_(0.5)
    folder = paths.output_dir(RUN)
    preset.save(folder)
    learner.save(folder / paths.META_STATE)
    artifacts.write_json(folder / paths.TRAIN_SUMMARY, {"run": RUN})
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), [_record(t) for t in HAND])
    encode.encode(RUN, DATASET, "dev", scheme="fp32", end=2, mixed=0.67, learner=learner, overwrite=True)
    return learner


def test_load_mixes_over_the_whole_file_so_any_slice_agrees(run):
    whole = task_batches.mix(task_batches.load(DATASET, "dev", 3), 0.67, 3)
    assert _ids(task_batches.load(DATASET, "dev", 3, start=1, end=3, mixed=0.67)) == _ids(whole[1:3])
    # the last question of a slice takes the next question of the file, not the first of the slice
    assert _ids(evaluate.load_tasks(DATASET, limit=2, mixed=0.67))[-1] == ["b0", "c0", "c1"]


def test_the_bank_holds_the_plain_and_the_mixed_passages(run):
    wanted = {"a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1"}        # both questions' own, and c's best two
    assert {p.pid for p in encode.passages(DATASET, "dev", 3, end=2, mixed=0.67)} == wanted
    with reader.open_bank(3, RUN, DATASET, "dev", "fp32") as stored:
        assert set(stored.ids()) == wanted
        assert stored.manifest["requests"][-1]["mixed"] == 0.67


def test_evaluation_answers_with_the_mixed_passages_and_records_the_share(run):
    learner = run
    out = evaluate.evaluate(RUN, DATASET, ["regrad", "rag", "closed_book"], limit=2, mixed=0.67, scheme="fp32",
                            learner=learner, evaluation="mixed")
    rows = result_files.method_predictions(RUN, DATASET, "regrad", "mixed")
    assert [r["passage_ids"] for r in rows] == [["a0", "b0", "b1"], ["b0", "c0", "c1"]]
    assert [r["passage_ids"] for r in result_files.method_predictions(RUN, DATASET, "rag", "mixed")] == \
        [r["passage_ids"] for r in rows]
    assert out["regrad"]["mixed"] == 0.67 and out["closed_book"]["mixed"] is None    # passages unused
    # the bank's mixed sums are the on-the-fly gradients of the same passages
    online = harness.run_method("regrad_online", learner, evaluate.load_tasks(DATASET, limit=2, mixed=0.67))
    assert [r["answer_nll"] for r in online] == pytest.approx([r["answer_nll"] for r in rows], rel=1e-5)
    plain = harness.run_method("regrad", learner, evaluate.load_tasks(DATASET, limit=2),
                               bank=reader.open_bank(3, RUN, DATASET, "dev", "fp32"))
    assert all(abs(a["answer_nll"] - b["answer_nll"]) > 1e-6 for a, b in zip(rows, plain))
    # results of another share are refused, not mixed up; closed_book's do not depend on it
    with pytest.raises(FileExistsError, match="'mixed': 0.67"):
        evaluate.evaluate(RUN, DATASET, ["regrad"], limit=2, scheme="fp32", learner=learner, evaluation="mixed")
    kept = evaluate.evaluate(RUN, DATASET, ["closed_book"], limit=2, scheme="fp32", learner=learner,
                             evaluation="mixed")
    assert kept["closed_book"]["status"] == "kept"


def test_results_written_before_mixed_was_recorded_count_as_unmixed():
    wanted = results.settings("regrad", "dev", 3, 1.0, None, True, "int4")
    old = {k: v for k, v in wanted.items() if k != "mixed"}
    assert results.saved_settings(old, wanted) == wanted
    assert results.saved_settings(old, results.settings("regrad", "dev", 3, 1.0, None, True, "int4", 0.5)) != \
        results.settings("regrad", "dev", 3, 1.0, None, True, "int4", 0.5)


def test_settings_refuse_a_share_the_bank_cannot_serve(run):
    settings = evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="fp32", limit=2,
                                         mixed=0.67, mixed_sweep=[0.0, 0.34])
    assert settings.mixed == 0.67
    with pytest.raises(ValueError, match=r"lacks 1 passage.*mixed=1.0.*04_encode with topk=3 and mixed=1.0"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="fp32", limit=2,
                                  mixed_sweep=[1.0])
    with pytest.raises(ValueError, match="mixed=1.5"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="fp32", mixed=1.5)


def test_mixed_sweep_rows_and_figure(run):
    learner = run
    rows = sweeps.sweep(RUN, DATASET, gammas=[1.0], mixes=[0.0, 0.34, 0.67], limit=2, learner=learner,
                        scheme="fp32", evaluation="sweep")
    assert [(r["mixed"], r["n"]) for r in rows] == [(0.0, 2), (0.34, 2), (0.67, 2)]
    plain = results.score_rows(harness.run_method("regrad", learner, evaluate.load_tasks(DATASET, limit=2),
                                                  bank=reader.open_bank(3, RUN, DATASET, "dev", "fp32")))
    assert rows[0]["nll"] == pytest.approx(plain["nll"], abs=1e-4)
    read = analysis.read_sweeps(RUN, "sweep")
    series = analysis.sweep_series(read, "mixed", gamma=1.0, topk=3)
    assert [r.mixed for r in series] == [0.0, 0.34, 0.67]
    assert isinstance(analysis.sweep_series(read, "gamma", topk=3), analysis.Missing)   # one gamma: no gamma sweep
    fig = plots.mixed_sweep(series)
    assert fig.axes[0].get_ylabel() == "EM (×100)" and len(fig.axes[0].lines[0].get_xdata()) == 3


def test_a_larger_topk_bank_serves_smaller_k(run):
    learner = run
    assert reader.serving_topk(2, RUN, DATASET, "dev", "fp32") == 3       # no top-2 bank: the top-3 one holds it
    assert reader.serving_topk(3, RUN, DATASET, "dev", "fp32") == 3
    assert reader.serving_topk(5, RUN, DATASET, "dev", "fp32") == 5       # none: open_bank names 04_encode
    rows = sweeps.sweep(RUN, DATASET, gammas=[1.0], topks=[1, 2, 3], limit=2, learner=learner, scheme="fp32",
                        evaluation="topk")
    assert [r["topk"] for r in rows] == [1, 2, 3]
    one = harness.run_method("regrad_online", learner, evaluate.load_tasks(DATASET, topk=1, limit=2), topk=1)
    assert rows[0]["nll"] == pytest.approx(results.score_rows(one)["nll"], abs=1e-4)
    with pytest.raises(ValueError, match="topk=4; re-run 02_augment"):     # top-4 needs 4 retrieved passages
        sweeps.sweep(RUN, DATASET, gammas=[1.0], topks=[4], limit=2, learner=learner, scheme="fp32",
                     evaluation="topk")


def test_a_sweep_that_covers_no_evaluated_dataset_says_so(run, caplog):
    settings = evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="fp32",
                                         sweep_datasets=["probe"], gammas=[0.0, 1.0])
    assert settings.sweep_datasets == [] and "no sweep runs: none of datasets ['mixqa']" in caplog.text
    missing = analysis.optional(analysis.read_sweeps, "no-such-run")
    assert "sweep_datasets" in missing.message
