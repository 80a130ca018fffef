"""Errors that named nothing now name the parameter, file or field, with the fix: a seed beyond 32 bits, a LoRA rank
beyond a layer's, a run name that is not UTF-8, a run whose peft_config.json changed after training, export_question
with a bad gamma or a question without passages, explore with a question that is no text."""

from __future__ import annotations

import json

import pytest

from regrad_lib import config, testing
from regrad_lib.answering import methods
from regrad_lib.core import task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import explore
from regrad_lib.io import params, paths
from regrad_lib.training import train

RUN = "named-errors"


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    return testing.saved_trained_run(RUN, config.load_preset("tiny"), seed=3)


def _task(passages=(("Paris", "Paris is the capital of France."),)):
    return task_batches.Task(0, "What is the capital of France?", ("Paris",), tuple(passages),
                             tuple(str(i) for i in range(len(passages))))


def test_a_seed_beyond_32_bits_is_refused_naming_it():
    """03 `-p seed 2**70` failed with an overflow deep in torch."""
    with pytest.raises(config.ConfigError, match=r"TrainArgs.seed = 1180591620717411303424 must be a whole number "
                                                 r"from 0 to 4294967295"):
        config.load_preset("tiny", {"train": {"seed": 2**70}})
    with pytest.raises(config.ConfigError, match=r"TrainArgs.seed = -1 must be"):
        train.configure("tiny", seed=-1)


def test_a_lora_rank_beyond_the_layers_is_refused_before_any_allocation(tiny_model_dir):
    """`r: 10**9` in peft_config.json was accepted until the allocator failed on 256 GB."""
    with pytest.raises(ValueError, match=r"peft_config.json: r = 1000000000 is more than the rank of the layer "
                                         r"model.layers.2.mlp.gate_proj \(64, the smaller of its input and output "
                                         r"sizes\).*give r <= 64"):
        Learner.create(config.load_preset("tiny", {"peft": {"r": 10**9}}))


def test_a_run_name_that_is_not_utf8_is_refused_naming_it():
    """A run name holding a byte of another encoding (as argv gives it) failed with a codec error naming nothing."""
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    with pytest.raises(params.ParameterError, match=r"run = 'caf\\udce9' is not a plain folder name \(it is not "
                                                    r"UTF-8 text"):
        paths.output_dir(name)


def test_a_run_whose_peft_config_changed_after_training_names_the_file(learner):
    """`saved shape (4, 64) != (8, 64)` named no file."""
    peft_file = paths.output_dir(RUN) / "peft_config.json"
    saved = peft_file.read_text()
    try:
        peft_file.write_text(json.dumps({**json.loads(saved), "r": 8}))
        with pytest.raises(ValueError, match=r"outputs/named-errors/meta_state.safetensors: LoRA tensor .*: saved "
                                             r"shape \(4, 64\) != \(8, 64\): the LoRA layout of the preset "
                                             r"\(peft_config.json: r 8.*restore the run's peft_config.json"):
            Learner.from_run(RUN)
    finally:
        peft_file.write_text(saved)


@pytest.mark.parametrize("gamma, error, message", [
    ("high", params.ParameterError, r"parameter gamma = 'high' \(str\) is not a number"),
    (-5, config.ConfigError, r"gamma = -5 must be >= 0"),
    (float("nan"), config.ConfigError, r"gamma = nan must be a finite number"),
])
def test_export_question_refuses_a_bad_gamma_naming_it(learner, tmp_path, gamma, error, message):
    """`gamma='high'` failed with a TypeError; gamma -5 was accepted (the config refuses < 0)."""
    with pytest.raises(error, match=message):
        methods.export_question(learner, _task(), tmp_path / "adapter", gamma=gamma)
    assert not (tmp_path / "adapter").exists()


def test_export_question_refuses_a_question_without_passages(learner, tmp_path):
    """A task without passages failed with "cannot collate an empty batch"."""
    with pytest.raises(ValueError, match=r"export_question: question 0 has no passages: phi'_q is made of its "
                                         r"passages' gradients"):
        methods.export_question(learner, _task(()), tmp_path / "adapter", gamma=1.0)


def test_explore_refuses_a_question_that_is_no_text(learner):
    """05 `-p question 5` (through a library call) failed with an AttributeError."""
    with pytest.raises(params.ParameterError, match=r"parameter question = 5 \(int\) is not text"):
        explore.explore(learner, None, 5)
