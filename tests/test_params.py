"""Typed parameters and plain names at every boundary: regrad_lib.io.params, the paths
it guards, the settings of 03/04/05, library calls, the runner and the launch flags."""

import argparse
import logging
import re
from pathlib import Path

import pytest

from regrad_lib import config, testing
from regrad_lib.bank import encode
from regrad_lib.evaluation import evaluate, sweeps
from regrad_lib.io import artifacts, params, paths
from regrad_lib.io.run_state import UnfinishedRunError
from regrad_lib.retrieval import augment
from regrad_lib.runner import launch, notebook, pipeline
from regrad_lib.training import train

RUN, DATASET = "typed-run", "typedqa"


# --- the checks themselves -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("false", False), ("True", True),
                                             (" FALSE ", False)])
def test_booleans_accept_true_and_false_only(value, expected):
    assert params.flag("overwrite", value) is expected


@pytest.mark.parametrize("value", ["yes", "0", "", 0, 1, None, "no", 1.0])
def test_anything_else_is_no_boolean_and_the_error_names_it(value):
    with pytest.raises(params.ParameterError, match=rf"parameter overwrite = {re.escape(repr(value))} .*is not a "
                                                    "boolean"):
        params.flag("overwrite", value)


@pytest.mark.parametrize("value, expected", [(3, 3), ("3", 3), (" -2 ", -2), (0, 0)])
def test_integers_accept_ints_and_their_text(value, expected):
    assert params.integer("topk", value) == expected


@pytest.mark.parametrize("value", [True, False, 2.5, 3.0, "abc", "2.5", None, [3]])
def test_integers_refuse_bools_floats_and_words(value):
    with pytest.raises(params.ParameterError, match=r"parameter limit = .* is not an integer"):
        params.integer("limit", value)


def test_integer_minimum_and_numbers():
    with pytest.raises(params.ParameterError, match="topk = 0 must be >= 1"):
        params.integer("topk", 0, minimum=1)
    assert params.number("gamma", "0.5") == 0.5 and params.number("gamma", 2) == 2
    for bad in (True, "high", None):
        with pytest.raises(params.ParameterError, match="parameter gamma = .* is not a number"):
            params.number("gamma", bad)


@pytest.mark.parametrize("value, expected", [([1, 2], [1, 2]), ("a,b", ["a", "b"]), ('["a"]', ["a"]), ("", [])])
def test_lists_accept_lists_json_and_commas(value, expected):
    assert params.listing("datasets", value) == expected


@pytest.mark.parametrize("value", [5, 2.5, True, None])
def test_lists_refuse_scalars(value):
    with pytest.raises(params.ParameterError, match=r"parameter gammas = .* is not a list"):
        params.listing("gammas", value)


@pytest.mark.parametrize("value", ["", ".", "..", "../data", "/tmp/x", "a/b", "a\\b", " demo", "demo ", ".hidden",
                                   "x\ny", "x" * 256, 5, None, Path("demo")])
def test_folder_names_refuse_paths_and_empties(value):
    with pytest.raises(params.ParameterError, match=r"run = .* (is not a plain folder name|is not a name)"):
        params.folder_name("run", value)


@pytest.mark.parametrize("value", ["demo", "demo-seeds-s43", "my_run.2", "Café", "x" * 255])
def test_plain_folder_names_pass(value):
    assert params.folder_name("run", value) == value


def test_coerce_follows_the_annotation():
    assert params.coerce("limit", "None", int | None) is None
    assert params.coerce("limit", "7", int | None) == 7
    assert params.coerce("evaluation", "None", str | None) == "None"       # text stays text
    assert params.coerce("gammas", "0,1.5", list[float]) == [0, 1.5]
    assert params.coerce("x", object, dict) is object                      # other annotations: left alone
    with pytest.raises(params.ParameterError, match=r"gammas\[1\] = 'x'"):
        params.coerce("gammas", [0, "x"], list[float])


# --- every name that becomes a path ---------------------------------------------------------------------------

BAD_NAMES = ["", ".", "..", "../data", "/tmp/outside", "a/b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_artifact_path_refuses_a_name_that_is_no_plain_folder_name(bad):
    calls = {
        "run": [lambda: paths.output_dir(bad), lambda: paths.results_dir(bad), lambda: paths.adapter_dir(bad),
                lambda: paths.executed_notebooks_dir(bad), lambda: paths.run_lock_file(bad),
                lambda: paths.bank_split_dir(3, bad, "popqa", "dev")],
        "dataset": [lambda: paths.augmented_dir(bad), lambda: paths.data_dir(bad),
                    lambda: paths.bank_split_dir(3, "demo", bad, "dev")],
        "split": [lambda: paths.augmented_file("popqa", bad), lambda: paths.bank_split_dir(3, "demo", "popqa", bad)],
        "index": [lambda: paths.index_dir(bad)],
        "evaluation": [lambda: paths.results_dir("demo", bad)],
        "adapter name": [lambda: paths.question_adapter_dir("demo", bad)],
        "preset": [lambda: paths.preset_dir(bad)],
    }
    for parameter, makers in calls.items():
        for make in makers:
            with pytest.raises(ValueError, match=rf"{parameter} = .* is not a plain folder name"):
                make()


@pytest.mark.parametrize("topk", [True, 0, "x", 2.5])
def test_bank_folders_take_an_integer_topk(topk):
    # `topk=True` wrote offline/True/... before
    with pytest.raises(ValueError, match="topk = "):
        paths.bank_split_dir(topk, "demo", "popqa", "dev")


def test_a_preset_name_is_a_plain_name_or_a_preset_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="preset = '' is not a plain folder name"):
        config.load_preset("")
    with pytest.raises(config.ConfigError, match=r"preset folder .*nowhere is not a folder"):
        config.load_preset(str(tmp_path / "nowhere"))
    variant = tmp_path / "v"
    variant.mkdir()
    artifacts.write_json(variant / "variant.json", {"base": "../configs/tiny"})
    with pytest.raises(config.ConfigError, match="key 'base'"):
        config.load_preset(variant)


def test_a_dataset_name_cannot_send_02_augment_outside_its_folder(tmp_path):
    """`name ../../outputs/ref` wrote dev.json into outputs/ref/: refused before anything is read or written."""
    (tmp_path / "dev.json").write_text('[{"question": "q?", "answer": "a"}]', encoding="utf-8")
    for bad in ("../../outputs/ref", "../x", str(tmp_path / "abs")):
        with pytest.raises(ValueError, match="dataset = .* is not a plain folder name"):
            augment.augment(bad, "dev", retriever=_NoRetriever(), data_dir=tmp_path)
    assert not (paths.work_root() / "outputs" / "ref").exists() and not (paths.work_root() / "data" / "x").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "dev.json"]


class _NoRetriever:
    def count(self):
        return 1

    def describe(self):
        return {"index": "none"}


# --- settings, library calls, launch flags and the runner ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """A finished run and an augmented dev file of 3 questions."""
    records = [{"test_id": i, "question": f"Which city is number {i}?", "answers": [c],
                "passages": [f"City {i} is {c}.", f"{c} is big.", f"See {c}."],
                "passage_ids": [str(3 * i), str(3 * i + 1), str(3 * i + 2)]} for i, c in enumerate(["Rome", "Oslo",
                                                                                                      "Lima"])]
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), records)
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"),     # each question its own test_id
                         [{**r, "test_id": k * 3 + r["test_id"]} for k in range(3) for r in records])
    testing.saved_trained_run(RUN, config.load_preset("tiny"))
    return RUN


@pytest.mark.parametrize("field, value, message", [
    ("limit", True, r"parameter limit = True \(bool\) is not an integer"),
    ("limit", 2.5, r"parameter limit = 2.5 \(float\) is not an integer"),
    ("limit", "abc", r"parameter limit = 'abc' \(str\) is not an integer"),
    ("topk", True, r"parameter topk = True \(bool\) is not an integer"),
    ("gammas", 5, r"parameter gammas = 5 \(int\) is not a list"),
    ("datasets", 5, r"parameter datasets = 5 \(int\) is not a list"),
    ("allow_unfinished", "no", r"parameter allow_unfinished = 'no' \(str\) is not a boolean"),
    ("overwrite", 1, r"parameter overwrite = 1 \(int\) is not a boolean"),
])
def test_evaluate_settings_refuse_wrong_types_naming_the_parameter(trained, field, value, message):
    kwargs = {"run": RUN, "datasets": [DATASET], "methods": ["closed_book"], field: value}
    with pytest.raises(params.ParameterError, match=message):
        evaluate.EvaluateSettings(**kwargs)


def test_settings_take_text_as_papermill_passes_it(trained):
    got = evaluate.EvaluateSettings(run=RUN, datasets=DATASET, methods="closed_book", topk="3", limit="2",
                                    gammas="[]", allow_unfinished="false", overwrite="False")
    assert (got.topk, got.limit, got.gammas, got.allow_unfinished, got.overwrite) == (3, 2, [], False, False)
    enc = encode.EncodeSettings(run=RUN, datasets=[DATASET], batch_size="8", limit=None, overwrite="true")
    assert enc.batch_size == 8 and enc.overwrite is True
    with pytest.raises(params.ParameterError, match=r"parameter batch_size = 8.0 \(float\) is not an integer"):
        encode.EncodeSettings(run=RUN, datasets=[DATASET], batch_size=8.0)
    with pytest.raises(params.ParameterError, match=r"parameter topk = True"):
        encode.EncodeSettings(run=RUN, datasets=[DATASET], topk=True)
    ts = train.TrainSettings(run="t", preset="tiny", train_datasets="typedqa", overwrite="false", max_steps="2",
                             seed="7")
    assert (ts.overwrite, ts.max_steps, ts.seed, ts.train_datasets) == (False, 2, 7, [DATASET])
    with pytest.raises(params.ParameterError, match=r"parameter max_steps = 2.5"):
        train.TrainSettings(run="t", preset="tiny", train_datasets=[DATASET], max_steps=2.5)


def test_library_calls_read_false_as_false(trained):
    """`encode(..., allow_unfinished="false")` encoded an unfinished run; `train(..., overwrite="false")`
    retrained a finished one: the text "false" was true."""
    summary = paths.output_dir(RUN) / paths.TRAIN_SUMMARY
    kept = summary.read_bytes()
    summary.unlink()
    try:
        with pytest.raises(UnfinishedRunError):
            encode.encode(RUN, DATASET, "dev", allow_unfinished="false")
        with pytest.raises(UnfinishedRunError):
            evaluate.evaluate(RUN, DATASET, ["no_update"], allow_unfinished="false")
        with pytest.raises(params.ParameterError, match="parameter allow_unfinished = 'nope'"):
            encode.encode(RUN, DATASET, "dev", allow_unfinished="nope")
        with pytest.raises(params.ParameterError, match=r"parameter gammas = 5 \(int\) is not a list"):
            sweeps.sweep(RUN, DATASET, gammas=5)
    finally:
        summary.write_bytes(kept)
    preset = config.load_preset("tiny", {"train": {"max_steps": 1, "meta_batch_size": 2, "tasks_per_forward": 2,
                                                   "validation_size": 2, "metric_for_best_model": "loss"}})
    first = train.train("typed-train", preset, [DATASET])
    again = train.train("typed-train", preset, [DATASET], overwrite="false")
    assert again["status"] == "kept" and again["wall_s"] == first["wall_s"]


def test_01s_corpus_reads_false_as_false():
    """01's indexed_corpus.prepare(corpus, "false", ...) added the probe's passages: the text was true."""
    from regrad_lib.data import indexed_corpus

    assert indexed_corpus.prepare("data/sample/psgs_w100.tsv", "false", "false", "false") == paths.sample_corpus()
    with pytest.raises(params.ParameterError, match=r"parameter transfer = 'no' \(str\) is not a boolean"):
        indexed_corpus.prepare("data/sample/psgs_w100.tsv", False, False, "no")


@pytest.mark.parametrize("hint, text, expected", [
    (bool, "false", False), (bool, "True", True), (int | None, "null", None), (int | None, "4", 4),
    (list[str], "a,b", ["a", "b"]), (list[float], "[0, 0.5]", [0, 0.5]), (str, "007", "007"),
])
def test_launch_flags_are_typed_like_the_settings(hint, text, expected):
    assert launch._parser_for(hint, "--x")(text) == expected


@pytest.mark.parametrize("hint, text", [(bool, "yes"), (int | None, "2.5"), (int, "true"), (list[float], "5")])
def test_launch_flags_refuse_wrong_types_naming_the_flag(hint, text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"parameter --x = "):
        launch._parser_for(hint, "--x")(text)


def test_the_runner_types_parameters_by_the_notebooks_defaults_before_running_any():
    typed = notebook.typed_parameters({"allow_unfinished": "false", "limit": "3", "gammas": "0,1",
                                              "probe": "false", "gamma": None, "evaluation": "first4"})
    assert typed == {"allow_unfinished": False, "limit": 3, "gammas": "0,1", "probe": False, "gamma": None,
                     "evaluation": "first4"}
    for key, value, message in [("limit", 2.5, "is not an integer"), ("gammas", 5, "is not a list"),
                                ("topk", True, "is not an integer"), ("overwrite", "yes", "is not a boolean")]:
        with pytest.raises(params.ParameterError, match=f"parameter {key} = .* {message}"):
            notebook.typed_parameters({key: value})


def test_the_runner_command_line_fails_at_once_naming_the_parameter(caplog):
    with caplog.at_level(logging.ERROR):
        assert pipeline.main(["--run", "typed", "--steps", "05", "--prepare-only", "-p", "limit", "abc"]) == 1
    assert "parameter limit = 'abc' (str) is not an integer" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert pipeline.main(["--run", "", "--steps", "05", "--prepare-only"]) == 1
    assert "run = '' is not a plain folder name" in caplog.text
    assert not paths.executed_notebooks_dir("typed").exists()
