"""A training run that stopped before its summary (an error, a kill) is refused downstream unless allowed."""

import math

import pytest

from regrad_lib import config
from regrad_lib.bank import encode, reader
from regrad_lib.core import regrad
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, results, sweeps
from regrad_lib.io import artifacts, paths
from regrad_lib.io.run_state import UnfinishedRunError
from regrad_lib.training import train

RUN, DATASET = "stopped", "unfinished-ds"
PLACES = ["Paris", "Tokyo", "Rome", "Cairo", "Lima", "Oslo", "Madrid", "Havana"]


def _records():
    return [{"test_id": i, "question": f"Which city is number {i}?", "answers": [city],
             "passages": [f"City number {i} is {city}.", f"{city} is a large city.", f"People visit {city}."],
             "passage_ids": [str(10 * i), str(10 * i + 1), str(10 * i + 2)], "titles": [city] * 3,
             "scores": [3.0, 2.0, 1.0]} for i, city in enumerate(PLACES)]


def _preset():
    return config.load_preset("tiny", {"train": {"max_steps": 4, "meta_batch_size": 2, "tasks_per_forward": 2,
                                                 "validation_size": 2, "eval_steps": 2, "save_steps": 2,
                                                 "metric_for_best_model": "loss"}})


def _stop(run: str) -> str:
    """Train ``run`` until its third step has a non-finite loss (NonFiniteError): meta_state and a checkpoint, no
    summary."""
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"), _records())
    real, calls = regrad.meta_losses, []

    def nan_on_third(*args, **kwargs):   # the meta losses of the third training step (one chunk a step)
        losses = real(*args, **kwargs)
        if kwargs.get("first_order"):     # the validation pass
            return losses
        calls.append(1)
        return losses * math.nan if len(calls) == 3 else losses

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(regrad, "meta_losses", nan_on_third)
        with pytest.raises(train.NonFiniteError):
            train.train(run, _preset(), [DATASET])
    assert (paths.output_dir(run) / "meta_state.safetensors").is_file()
    assert not paths.train_summary_file(run).exists()
    return run


@pytest.fixture(scope="module")
def stopped(tiny_model_dir):
    """The module's unfinished run, never finished nor evaluated by a test (a test that finishes a run stops one
    of its own: in another order it would leave this one finished)."""
    return _stop(RUN)


def test_an_unfinished_run_is_refused_everywhere_with_how_to_resume(stopped):
    message = (r"outputs/stopped is an unfinished training run: it has no train_summary.json .* its last checkpoint "
               r"is after step 2 of 4\. Resume it by running 03_train again .* or pass allow_unfinished=True")
    with pytest.raises(UnfinishedRunError, match=message):
        Learner.from_run(RUN)
    with pytest.raises(UnfinishedRunError, match=message):
        encode.EncodeSettings(run=RUN, datasets=[DATASET], split="train_all")
    with pytest.raises(UnfinishedRunError, match=message):
        encode.encode(RUN, DATASET, "train_all")
    with pytest.raises(UnfinishedRunError, match=message):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["no_update"], split="train_all")
    with pytest.raises(UnfinishedRunError, match=message):
        evaluate.evaluate(RUN, DATASET, ["no_update"], split="train_all")
    learner = Learner.from_run(RUN, allow_unfinished=True)
    assert learner.run_finished is False
    with pytest.raises(UnfinishedRunError, match=message):   # a loaded learner is checked as well
        evaluate.evaluate(RUN, DATASET, ["no_update"], split="train_all", learner=learner)
    assert not paths.results_dir(RUN).exists() and not paths.bank_split_dir(3, RUN, DATASET, "train_all").exists()


def test_allow_unfinished_is_recorded_and_finishing_the_run_invalidates_the_results(tiny_model_dir):
    run = _stop("stopped-then-finished")          # its own: this test finishes it and writes results
    settings = encode.EncodeSettings(run=run, datasets=[DATASET], split="train_all", allow_unfinished=True)
    banks = encode.encode_all(settings)
    with reader.GradientBank.open(banks[DATASET][reader.DEFAULT_SCHEME]) as b:
        assert b.manifest["source"]["run_finished"] is False
    evaluate.EvaluateSettings(run=run, datasets=[DATASET], methods=["no_update"], split="train_all",
                              allow_unfinished=True)
    evaluate.evaluate(run, DATASET, ["no_update", "closed_book"], split="train_all", allow_unfinished=True)
    metrics = artifacts.read_json(results.method_files(run, DATASET, "no_update")[1])
    assert metrics["run_finished"] is False
    assert artifacts.read_json(results.method_files(run, DATASET, "closed_book")[1])["run_finished"] is None

    assert train.train(run, _preset(), [DATASET])["steps"] == 4          # resumed and finished
    assert Learner.from_run(run).run_finished is True
    kept = evaluate.evaluate(run, DATASET, ["closed_book"], split="train_all")   # the base model: still valid
    assert kept["closed_book"]["status"] == "kept"
    with pytest.raises(FileExistsError, match=r"'run_finished': False\}, not .*'run_finished': True\}"):
        evaluate.evaluate(run, DATASET, ["no_update"], split="train_all")
    redone = evaluate.evaluate(run, DATASET, ["no_update"], split="train_all", overwrite=True)
    assert redone["no_update"]["status"] == "computed" and redone["no_update"]["run_finished"] is True


@pytest.mark.parametrize("gamma", [-1.0, float("nan"), float("inf")])
def test_evaluate_gamma_follows_the_config_rules(stopped, gamma):
    with pytest.raises(config.ConfigError, match="gamma = .* must be"):
        evaluate.evaluate(RUN, DATASET, ["no_update"], split="train_all", gamma=gamma, allow_unfinished=True)
    with pytest.raises(config.ConfigError, match=r"gammas\[1\] = .* must be"):
        sweeps.sweep(RUN, DATASET, gammas=[0.0, gamma], split="train_all", allow_unfinished=True)
    with pytest.raises(config.ConfigError, match="gamma = .* must be"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["no_update"], gamma=gamma,
                                  allow_unfinished=True)
