"""Nothing is deleted that the user did not name (nor followed through a link): run names cannot
leave outputs/, and a folder regrad did not write is refused, never removed (regrad_lib.io.ownership)."""

import os

import pytest
import torch

from regrad_lib import config, retrieval
from regrad_lib.answering import methods
from regrad_lib.core import adapters, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.io import artifacts, ownership, params, paths
from regrad_lib.runner import launch
from regrad_lib.training import train

DATASET = "ownqa"


def _records():
    cities = ["Rome", "Oslo", "Lima", "Kyiv", "Riga", "Bern"]
    return [{"test_id": i, "question": f"Which city is number {i}?", "answers": [c],
             "passages": [f"City {i} is {c}.", f"{c} is big.", f"See {c}."],
             "passage_ids": [str(3 * i), str(3 * i + 1), str(3 * i + 2)]} for i, c in enumerate(cities)]


def _preset():
    return config.load_preset("tiny", {"train": {"max_steps": 1, "meta_batch_size": 2, "tasks_per_forward": 2,
                                                 "validation_size": 2, "metric_for_best_model": "loss"}})


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"), _records())
    return [DATASET]


@pytest.fixture()
def finished(data):
    train.train("own-finished", _preset(), data, overwrite=True)
    return paths.output_dir("own-finished")


@pytest.mark.parametrize("bad", ["", "..", "../data", "../outputs", "."])
def test_a_run_name_that_is_no_folder_name_deletes_nothing(data, finished, bad, tmp_path):
    """`launch train --run ''` replaced outputs/ itself, `--run ../data` deleted the augmented data."""
    before = sorted(p.relative_to(paths.work_root()) for p in paths.work_root().rglob("*") if ".locks" not in p.parts)
    with pytest.raises(params.ParameterError, match="run = .* is not a plain folder name"):
        train.train(bad, _preset(), data, overwrite=True)
    with pytest.raises(params.ParameterError, match="run = .* is not a plain folder name"):
        launch.parse_args(["train", "--run", bad, "--preset", "tiny", "--train-datasets", DATASET,
                           "--overwrite", "true"])
    after = sorted(p.relative_to(paths.work_root()) for p in paths.work_root().rglob("*") if ".locks" not in p.parts)
    assert after == before and (finished / paths.TRAIN_SUMMARY).is_file()


def test_an_absolute_run_path_deletes_nothing_outside_the_project(data, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "file.txt").write_text("keep me")
    with pytest.raises(params.ParameterError, match="run = .* is not a plain folder name"):
        train.train(str(outside), _preset(), data, overwrite=True)
    assert (outside / "file.txt").read_text() == "keep me"


def test_a_folder_regrad_did_not_write_is_refused_not_removed(data):
    folder = paths.output_dir("own-users")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    for overwrite in (True, False):     # overwrite, and "no complete checkpoint: starting again"
        with pytest.raises(ownership.NotOursError, match=r"outputs/own-users was not written by regrad \(it holds "
                                                         r"no regrad_run.json or train_request.json\)"):
            train.train("own-users", _preset(), data, overwrite=overwrite)
        assert (folder / "notes.txt").read_text() == "mine" and sorted(os.listdir(folder)) == ["notes.txt"]


def test_new_runs_carry_the_marker_and_runs_made_before_it_are_recognised(data, finished):
    assert ownership.run_marked(finished) and ownership.is_run(finished)
    # a run made before markers existed: its train_request.json says 03_train made it, so overwrite may replace it
    (finished / ownership.RUN_MARKER).unlink()
    assert ownership.is_run(finished) and not ownership.run_marked(finished)
    train.train("own-finished", _preset(), data, overwrite=True)
    assert ownership.run_marked(finished)


def test_a_run_folder_that_is_a_symbolic_link_is_refused_naming_it(data, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "data.bin").write_bytes(b"x")
    link = paths.output_dir("own-linked")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(ownership.NotOursError, match=r"outputs/own-linked is a symbolic link \(to .*elsewhere\): "
                                                     "regrad does not delete through links"):
        train.train("own-linked", _preset(), data, overwrite=True)
    assert (target / "data.bin").read_bytes() == b"x" and link.is_symlink()


def test_remove_never_leaves_its_root(tmp_path):
    root = tmp_path / "outputs"
    (root / "run").mkdir(parents=True)
    (root / "run" / ownership.RUN_MARKER).write_text("{}")
    with pytest.raises(ownership.NotOursError, match="is not inside"):
        ownership.remove(root, root, "training run", [ownership.RUN_MARKER], "choose another run name")
    ownership.remove(root / "run", root, "training run", [ownership.RUN_MARKER], "x")
    assert root.is_dir() and not (root / "run").exists()


def test_remove_refuses_a_folder_outside_its_root_however_its_path_is_written(tmp_path):
    """Inside the root means inside after resolving: a path that climbs out through ``..`` or through a linked
    folder below the root is refused, though the folder carries the marker; a folder nested deeper inside is ours."""
    root, outside = tmp_path / "outputs", tmp_path / "elsewhere" / "run"
    (root / "a").mkdir(parents=True)
    outside.mkdir(parents=True)
    (outside / ownership.RUN_MARKER).write_text("{}")
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for folder in (outside, root / "a" / ".." / ".." / "elsewhere" / "run", root / "linked" / "run"):
        with pytest.raises(ownership.NotOursError, match="is not inside"):
            ownership.remove(folder, root, "training run", [ownership.RUN_MARKER], "choose another run name")
    assert (outside / ownership.RUN_MARKER).is_file()
    deep = root / "a" / "b"
    deep.mkdir()
    (deep / ownership.RUN_MARKER).write_text("{}")
    ownership.remove(deep, root, "training run", [ownership.RUN_MARKER], "x")
    assert not deep.exists() and (root / "a").is_dir()


def test_export_question_refuses_a_folder_it_did_not_write(data, tmp_path):
    """`methods.export_question(folder=<an existing folder>)` deleted the user's notes.txt."""
    learner = Learner.create(_preset())
    [task] = task_batches.load(DATASET, "train_all", 3, end=1)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ownership.NotOursError, match=r"mine exists and was not written by regrad \(it holds no "
                                                     r"regrad_adapter.json\): it is not replaced"):
        methods.export_question(learner, task, folder, gamma=1.0)
    assert sorted(os.listdir(folder)) == ["notes.txt"]
    ours = methods.export_question(learner, task, tmp_path / "ours", gamma=1.0)
    first = (ours / adapters.WEIGHTS_FILE).read_bytes()
    methods.export_question(learner, task, ours, gamma=2.0)      # its own folder: replaced
    assert (ours / adapters.WEIGHTS_FILE).read_bytes() != first and (ours / adapters.INFO_FILE).is_file()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ownership.NotOursError, match="is a file"):
        adapters.save(tmp_path / "a-file", {"x.lora_A": torch.zeros(2, 2)}, learner.preset.peft)


def test_rebuilding_an_index_removes_only_an_index(tmp_path):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("id\ttext\ttitle\n1\tRome is a city.\tRome\n2\tOslo is a city.\tOslo\n", encoding="utf-8")
    folder = paths.index_dir("not-an-index")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ownership.NotOursError, match=r"indexes/not-an-index was not written by regrad"):
        retrieval.build(corpus, "not-an-index", rebuild="true", threads=1, heap_mb=32)
    assert (folder / "notes.txt").read_text() == "mine"
    retrieval.build(corpus, "an-index", threads=1, heap_mb=32)
    assert retrieval.build(corpus, "an-index", rebuild=True, threads=1, heap_mb=32).count() == 2
    with pytest.raises(params.ParameterError, match=r"parameter rebuild = 'yes'"):
        retrieval.build(corpus, "an-index", rebuild="yes", threads=1, heap_mb=32)


# --- folders the user names on a command line ------------------------------------------------------------------

def test_reference_save_refuses_a_folder_it_did_not_write(tmp_path):
    """`python -m regrad_lib.reporting.reference save --run R --reference <any folder>` replaced the folder (a
    user's thesis.tex gone, exit 0)."""
    from regrad_lib.reporting import reference
    from regrad_lib.reporting.reference_tables import META, Results

    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("my thesis")
    with pytest.raises(ownership.NotOursError, match=r"thesis exists and was not written by regrad \(it holds no "
                                                     r"reference.json\): it is not replaced; .*--reference"):
        reference.save(Results(meta={"run": "r"}), folder)
    assert reference.main(["save", "--run", "no-such-run", "--reference", str(folder)]) == 1   # before any reading
    assert sorted(os.listdir(folder)) == ["thesis.tex"] and (folder / "thesis.tex").read_text() == "my thesis"
    ours = reference.save(Results(meta={"run": "r"}, summary=[{"dataset": "d", "em": 1.0}]), tmp_path / "ours")
    reference.save(Results(meta={"run": "r2"}), ours)                     # its own folder: replaced
    assert sorted(os.listdir(ours)) == [META]
    with pytest.raises(ownership.NotOursError, match="symbolic link"):
        (tmp_path / "link").symlink_to(ours)
        reference.save(Results(meta={"run": "r"}), tmp_path / "link")
