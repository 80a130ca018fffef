"""Fault injection: SIGKILL a child process at chosen points of each long job, resume, compare with a clean run.

Each child (tests/fault_child.py) runs one stage against this module's own work root and kills itself
(no clean-up runs) on the n-th matching call of a wrapped function, e.g. inside the checkpoint folder swap
or between a bank shard's rename and the manifest update. The job is then resumed here and its artifacts are
compared with an uninterrupted run's, bit for bit: the index's search results, the augmented file, the training
run (tiny preset, CPU, fp32: meta weights, checkpoint tensors, log rows), the bank's gradients, the evaluation's
predictions, metrics and summary, and continual post-training's weights, drift rows and answers. Children run with
this process's thread count, so the comparisons are exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from regrad_lib import config, retrieval, testing
from regrad_lib.answering import harness
from regrad_lib.bank import encode, on_disk, reader
from regrad_lib.core.learner import Learner
from regrad_lib.cpt import continual
from regrad_lib.evaluation import evaluate
from regrad_lib.io import artifacts, paths, result_files, run_state
from regrad_lib.io.run_state import UnfinishedRunError
from regrad_lib.retrieval import augment, interface, tantivy
from regrad_lib.training import train

CHILD = Path(__file__).with_name("fault_child.py")
KILLED = -signal.SIGKILL
INDEX = "faults"
PASSAGES = 2000                   # of the sample corpus; commits every 500
QUESTIONS = 24
STEPS = 30
TRAIN = {"train_datasets": ["popqa"], "train_file": "train_24"}
OVERRIDES = {"train": {"max_steps": STEPS, "save_steps": 3, "eval_steps": 10, "meta_batch_size": 2,
                       "tasks_per_forward": 2, "validation_size": 2, "warmup_ratio": 0.0}}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    """A work root of this module's own (children and this process share it), with the tiny model linked in."""
    root = tmp_path_factory.mktemp("faults")
    (root / "models").mkdir()
    (root / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGRAD_WORK", str(root))
        lines = paths.sample_corpus().read_text(encoding="utf-8").splitlines(keepends=True)
        (root / "corpus.tsv").write_text("".join(lines[:PASSAGES + 1]), encoding="utf-8")
        yield root


def child(stage: str, hook: dict | None = None, **kwargs) -> int:
    """Run ``stage`` in a child process (killed by ``hook``); its return code."""
    spec = {"stage": stage, "kwargs": kwargs, "hook": hook, "threads": torch.get_num_threads()}
    env = {**os.environ, "PYTHONPATH": str(paths.repo_root())}
    done = subprocess.run([sys.executable, str(CHILD), json.dumps(spec)], env=env, capture_output=True, text=True,
                          timeout=900)   # seconds alone; far more on a machine shared with other jobs
    if done.returncode not in (0, KILLED):
        raise AssertionError(f"child {stage} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode


def killed(stage: str, hook: dict, **kwargs) -> None:
    assert child(stage, hook, **kwargs) == KILLED, f"the kill point {hook} was never reached"


# --- index ------------------------------------------------------------------------------------------------

QUERIES = ["Who was George Rankin?", "capital of France", "Which river flows through the city?", "football club"]


def _hits(name: str) -> list:
    return [[(h.passage_id, h.score) for h in hits] for hits in retrieval.open(name).search(QUERIES, 5)]


@pytest.fixture(scope="module")
def index(work):
    retrieval.build(work / "corpus.tsv", INDEX, commit_every=500, threads=1, heap_mb=64)
    return INDEX


def test_index_build_resumes_after_kills_mid_batch_and_before_the_manifest(work, index):
    options = {"corpus_path": str(work / "corpus.tsv"), "name": "killed", "commit_every": 500, "threads": 1,
               "heap_mb": 64}
    killed("index", {"target": "regrad_lib.data.corpus:read", "nth_item": 1234}, **options)   # 2 commits, 234 pending
    with pytest.raises(interface.RetrievalError, match="incomplete"):
        retrieval.open("killed")
    killed("index", {"target": "regrad_lib.io.artifacts:write_json", "match": tantivy.MANIFEST, "nth": 1},
           **options)
    with pytest.raises(interface.RetrievalError, match="incomplete"):
        retrieval.open("killed")
    retrieval.build(**options)
    assert retrieval.open("killed").count() == PASSAGES
    assert _hits("killed") == _hits(index)


# --- augment ------------------------------------------------------------------------------------------------

def _augment(**kwargs) -> dict:
    return {"dataset": "popqa", "split": "train", "index": INDEX, "data_dir": "data/sample/popqa", "end": QUESTIONS,
            "batch_size": 5, **kwargs}


@pytest.fixture(scope="module")
def augmented(work, index):
    """popqa train_24 (for training and the bank), as an uninterrupted augment writes it."""
    args = _augment()
    return augment.augment(retriever=retrieval.open(args.pop("index")), **args)


def test_augment_resumes_after_kills_mid_file_and_before_its_sidecar(work, augmented):
    expected, meta = augmented.read_bytes(), json.loads(augment.meta_file(augmented).read_text())
    augmented.unlink()
    augment.meta_file(augmented).unlink()
    killed("augment", {"target": "regrad_lib.retrieval.augment:_record", "nth": 13}, **_augment())   # batch 3 of 5
    assert augment.partial_file(augmented).exists() and not augmented.exists()
    killed("augment", {"target": "regrad_lib.io.artifacts:write_json", "match": r".*\.meta\.json", "nth": 1},
           **_augment())
    args = _augment()
    out = augment.augment(retriever=retrieval.open(args.pop("index")), **args)
    assert out.read_bytes() == expected
    assert json.loads(augment.meta_file(out).read_text())["config"] == meta["config"]
    assert not augment.partial_file(out).exists()


# --- training -----------------------------------------------------------------------------------------------

def _train(run: str) -> dict:
    return train.train(run, config.load_preset("tiny", OVERRIDES), **TRAIN)


def killed_training(run: str, hook: dict) -> None:
    killed("train", hook, run=run, preset="tiny", overrides=OVERRIDES, **TRAIN)


@pytest.fixture(scope="module")
def reference_run(work, augmented):
    _train("reference")
    return "reference"


def _resume(run: str, monkeypatch) -> int:
    """Resume ``run`` in this process; the number of meta steps it computed."""
    calls = []
    real = train.meta_step

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "meta_step", counting)
    _train(run)
    monkeypatch.setattr(train, "meta_step", real)
    return len(calls)


def assert_same_training(run: str, reference: str) -> None:
    """Same meta weights, checkpoint tensors and log rows (but wall times) as the reference, bit for bit."""
    got, want = paths.output_dir(run), paths.output_dir(reference)
    for name in (paths.META_STATE, "checkpoint/state.safetensors"):
        a, b = load_file(str(got / name)), load_file(str(want / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name

    def rows(r):
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in run_state.read_training_log(r)]
    assert rows(run) == rows(reference)
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())


# Kill points of the checkpoint swap (artifacts.atomic_dir, a save every 3 steps) and the step the resumed run
# must continue from. The first reproduces the failure this guards against (the 10th rename of a folder named
# `checkpoint`: the old code had deleted `checkpoint/` just before it, and the next train() then deleted the whole
# run); the others walk through the 3rd save (step 9), whose renames of `checkpoint` are the 4th
# (`checkpoint -> .checkpoint.old`) and the 5th (`.checkpoint.new -> checkpoint`).
SWAP_KILLS = {
    "10th-rename-of-checkpoint": ({"target": "os:replace", "match": "checkpoint", "nth": 10}, 18),
    "tmp-complete-not-renamed": ({"target": "os:replace", "match": r"\.checkpoint\..*\.tmp", "nth": 3}, 6),
    "new-complete-old-in-place": ({"target": "os:replace", "match": "checkpoint", "nth": 4}, 9),
    "old-moved-aside": ({"target": "os:replace", "match": "checkpoint", "nth": 5}, 9),
    "new-in-place-old-kept": ({"target": "os:replace", "match": "checkpoint", "nth": 5, "when": "after"}, 9),
    "old-half-deleted": ({"target": "os:unlink", "match": "state.safetensors", "nth": 2, "when": "after"}, 9),
}


@pytest.mark.parametrize("point", list(SWAP_KILLS))
def test_kill_inside_the_checkpoint_swap_resumes_from_the_newest_complete_checkpoint(work, reference_run, point,
                                                                                     monkeypatch):
    hook, resumed_from = SWAP_KILLS[point]
    run = f"swap-{point}"
    killed_training(run, hook)
    assert not (paths.output_dir(run) / paths.TRAIN_SUMMARY).exists()
    if point == "old-moved-aside":    # no `checkpoint/` at all, as where the old code lost the run
        assert not (paths.output_dir(run) / "checkpoint").exists()
    assert _resume(run, monkeypatch) == STEPS - resumed_from
    assert_same_training(run, reference_run)


def test_training_killed_mid_step_then_before_its_summary_resumes_bit_identically(work, reference_run,
                                                                                monkeypatch):
    run = "killed-twice"
    killed_training(run, {"target": "regrad_lib.training.train:meta_step", "nth": 14})
    killed_training(run, {"target": "regrad_lib.io.artifacts:write_json", "match": paths.TRAIN_SUMMARY, "nth": 1})
    with pytest.raises(UnfinishedRunError, match="unfinished training run"):
        Learner.from_run(run)
    assert _resume(run, monkeypatch) == 0          # every step was done: only the summary was missing
    assert_same_training(run, reference_run)


# --- encode -------------------------------------------------------------------------------------------------

def _encode(**kwargs) -> dict:
    # shards of 8 fp32 rows (4608 numbers each), batches of 4: a resumed encode recomputes the very batches
    # of an uninterrupted one (same passages, same padding), so the bank must come out bit for bit the same
    return {"run": "reference", "dataset": "popqa", "split": "train_24", "scheme": "fp32", "batch_size": 4,
            "shard_bytes": 8 * 4 * 4608, **kwargs}


def test_encode_killed_between_a_shard_and_its_manifest_resumes_to_the_same_bank(work, reference_run):
    args = _encode()
    whole = encode.encode(**args)
    with reader.GradientBank.open(whole) as b:
        expected = {p: b.rows([p])[0] for p in b.ids()}
    assert len(expected) > 24                       # several shards of 8 rows
    args["overwrite"] = True
    killed("encode", {"target": "os:replace", "match": r"shard-\d+\.safetensors", "nth": 2, "when": "after"},
           **args)
    with reader.GradientBank.open(whole) as b:          # the manifest lists the first shard only
        assert len(b) == 8
    killed("encode", {"target": "os:replace", "match": r"shard-\d+\.safetensors", "nth": 2}, **_encode())
    resumed = encode.encode(**_encode())
    with reader.GradientBank.open(resumed, learner=Learner.from_run("reference")) as b:
        assert sorted(b.ids()) == sorted(expected)
        assert b.verify()["entries"] == len(expected)
        for p, g in expected.items():
            assert torch.equal(b.rows([p])[0], g), p
        listed = {s["file"] for s in b.manifest["shards"]}
    assert {f.name for f in resumed.iterdir()} == listed | {on_disk.MANIFEST}


def test_a_log_line_cut_short_by_a_full_disk_is_dropped_on_resume(work, reference_run, monkeypatch):
    run = "torn-log"
    killed_training(run, {"target": "regrad_lib.training.train:meta_step", "nth": 8})
    with (paths.output_dir(run) / paths.TRAINING_LOG).open("a", encoding="utf-8") as f:
        f.write('{"kind": "train", "step": 8, "lo')          # an append that ran out of space
    assert _resume(run, monkeypatch) == STEPS - 6
    assert_same_training(run, reference_run)


# --- continual post-training ----------------------------------------------------------------------------------

CPT_RUN, CPT_DATA, CPT_GENERAL = "cpt-faults", "cptfaults", "cptfaultsgen"
CPT_STEPS = 14            # 3 chunks of 5, 4 and 4 passages, batches of 2, 2 epochs: 6 + 4 + 4 steps


def _cpt(work, evaluation: str) -> dict:
    return {"run": CPT_RUN, "dataset": CPT_DATA, "methods": ["cpt"], "general_corpus": str(work / "corpus.tsv"),
            "general_datasets": [CPT_GENERAL], "evaluation": evaluation}


@pytest.fixture(scope="module")
def cpt_reference(work):
    """A saved tiny run, 6 dev questions, general candidates, and an uninterrupted stream (evaluation 'whole')."""
    preset = config.load_preset("tiny", {"cpt": {"chunks": 3, "batch_size": 2, "learning_rate": 1e-2,
                                                 "epochs_per_chunk": 2, "general_passages": 4, "general_questions": 2}})
    testing.saved_trained_run(CPT_RUN, preset, seed=2)
    artifacts.write_json(paths.augmented_file(CPT_DATA, "dev"), [
        {"test_id": i, "question": f"Which river flows through city {i}?", "answers": [f"river {i}"],
         "passages": [f"City {i} lies on river {i}.", f"River {i} is long.", "Rivers flow to the sea."],
         "passage_ids": [f"{i}a", f"{i}b", "s"], "titles": ["", "", ""], "scores": [3.0, 2.0, 1.0]} for i in range(6)])
    artifacts.write_json(paths.augmented_file(CPT_GENERAL, "train_all"), [
        {"test_id": i, "question": f"What is thing {i}?", "answers": ["::::::::"], "passages": [], "passage_ids": [],
         "titles": [], "scores": []} for i in range(4)])
    evaluate.evaluate(**_cpt(work, "whole"))
    return "whole"


def _stream_state(evaluation: str) -> dict:
    folder = paths.cpt_dir(CPT_RUN, CPT_DATA, evaluation) / continual.CHECKPOINT
    artifacts.recover_dir(folder)
    return artifacts.read_json(folder / continual.STATE)


def test_cpt_killed_mid_chunk_inside_its_checkpoint_swap_and_before_its_drift_file_ends_with_the_same_weights(
        work, cpt_reference, monkeypatch):
    args = _cpt(work, "killed")
    killed("cpt", {"target": "regrad_lib.cpt.continual:train_step", "nth": 9}, **args)                 # in chunk 2
    assert _stream_state("killed")["chunk"] == 1
    killed("cpt", {"target": "os:replace", "match": "checkpoint", "nth": 2}, **args)           # chunk 2's swap
    assert _stream_state("killed")["chunk"] == 2                # the complete new copy is put back
    drift_file = paths.drift_file(CPT_RUN, CPT_DATA).name
    killed("cpt", {"target": "regrad_lib.io.artifacts:write_json", "match": drift_file, "nth": 1}, **args)
    steps, real = [], continual.train_step
    monkeypatch.setattr(continual, "train_step", lambda *a, **k: steps.append(1) or real(*a, **k))
    evaluate.evaluate(**args)
    assert steps == []                                          # every chunk was done: only the files were missing
    ours, whole = (paths.cpt_dir(CPT_RUN, CPT_DATA, e) for e in ("killed", cpt_reference))
    a, b = (load_file(str(f / continual.CHECKPOINT / continual.TENSORS)) for f in (ours, whole))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert result_files.read_drift(CPT_RUN, CPT_DATA, "killed")["drift"] == \
        result_files.read_drift(CPT_RUN, CPT_DATA, "whole")["drift"]
    assert result_files.method_predictions(CPT_RUN, CPT_DATA, "cpt", "killed") == \
        result_files.method_predictions(CPT_RUN, CPT_DATA, "cpt", "whole")
    assert _stream_state("killed")["steps"] == CPT_STEPS


# --- evaluate -----------------------------------------------------------------------------------------------

EVAL_METHODS = ["closed_book", "regrad", "shift", "no_update"]


def _evaluate(evaluation: str) -> dict:
    # 24 questions in batches of 8 (tiny preset): three generate() calls per method
    return {"run": "reference", "dataset": "popqa", "methods": EVAL_METHODS, "split": "train_24", "scheme": "fp32",
            "evaluation": evaluation}


@pytest.fixture(scope="module")
def uninterrupted_evaluation(work, reference_run):
    encode.encode(**_encode())                       # the fp32 bank (resumes: nothing to do if it exists)
    evaluate.evaluate(**_evaluate("whole"))
    return "whole"


def _evaluation_files(evaluation: str) -> dict[str, object]:
    """Every file of a named evaluation: text as is, metrics.json without the evaluation's own name."""
    root = paths.results_dir("reference", evaluation)
    out = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if file.name.endswith(".metrics.json"):
            saved = json.loads(file.read_text())
            assert saved["provenance"]["config"].pop("evaluation") == evaluation
            out[str(file.relative_to(root))] = saved
        else:
            out[str(file.relative_to(root))] = file.read_bytes()
    return out


# Kill points of 05_evaluate: inside a method (its second batch), between a method's predictions file and its
# metrics.json (the predictions exist, the method is not done), and after the last metrics.json before summary.csv.
EVAL_KILLS = {
    "mid-method": ({"target": "regrad_lib.core.generation:generate", "nth": 5}, ["closed_book"]),
    "predictions-not-metrics": ({"target": "regrad_lib.io.artifacts:write_json", "match": r"shift\.metrics\.json",
                                 "nth": 1}, ["closed_book", "regrad"]),
    "metrics-not-summary": ({"target": "regrad_lib.io.artifacts:write_text", "match": "summary.csv", "nth": 1},
                            EVAL_METHODS),
}


@pytest.mark.parametrize("point", list(EVAL_KILLS))
def test_evaluation_killed_resumes_method_by_method_to_the_same_results(work, uninterrupted_evaluation, point,
                                                                       monkeypatch):
    hook, finished = EVAL_KILLS[point]
    name = f"killed-{point}"
    killed("evaluate", hook, **_evaluate(name))
    folder = paths.results_dir("reference", name) / "popqa"
    assert sorted(p.name.split(".")[0] for p in folder.glob("*.metrics.json")) == sorted(finished)
    assert not (paths.results_dir("reference", name) / "summary.csv").exists()
    if point == "predictions-not-metrics":
        assert (folder / "shift.predictions.jsonl").exists()      # written, but without metrics it is not done
    computed = []
    real = harness.run_method
    monkeypatch.setattr(evaluate, "run_method", lambda method, *a, **k: computed.append(method) or real(method, *a,
                                                                                                         **k))
    result = evaluate.evaluate(**_evaluate(name))
    assert computed == [m for m in EVAL_METHODS if m not in finished]     # finished methods are kept, not redone
    assert {m: r["status"] for m, r in result.items()} == {m: "kept" if m in finished else "computed"
                                                          for m in EVAL_METHODS}
    assert _evaluation_files(name) == _evaluation_files(uninterrupted_evaluation)
