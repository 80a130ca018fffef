"""Binding in meta-training: another question's passage of the same relation in a question's top-k
(train_data.with_distractors), and the relations it reads (data.relations)."""

import pytest

from regrad_lib import config
from regrad_lib.core.task_batches import Task
from regrad_lib.data import relations
from regrad_lib.io import artifacts, paths
from regrad_lib.training import train_data


def _task(tid, person, value, dataset="probe"):
    return Task(tid, f"What is the job of {person}?", (value,),
                passages=((person, f"{person} works as a {value}."), ("x", f"filler {tid}"), ("y", f"other {tid}")),
                passage_ids=(f"{person}-p", f"f{tid}", f"o{tid}"), extra={"dataset": dataset})


TASKS = [_task(0, "Ann", "baker"), _task(1, "Bo", "pilot"), _task(2, "Cy", "baker"), _task(3, "Di", "nurse"),
         _task(4, "Ed", "violin"), _task(5, "Fa", "cello")]
RELATION = {("probe", 0): "occupation", ("probe", 1): "occupation", ("probe", 2): "occupation",
            ("probe", 3): "occupation", ("probe", 4): "instrument", ("probe", 5): "instrument"}


def test_every_chosen_task_gets_a_same_relation_passage_with_another_value_as_its_last():
    out = train_data.with_distractors(TASKS, RELATION, 1.0, seed=42, datasets=["probe"])
    assert [t.question for t in out] == [t.question for t in TASKS] and [t.answers for t in out] == \
        [t.answers for t in TASKS]
    by_id = {t.test_id: t for t in TASKS}
    for before, after in zip(TASKS, out):
        other = by_id[after.extra["distractor_of"]]
        assert after.passages[:2] == before.passages[:2] and after.passage_ids[:2] == before.passage_ids[:2]
        assert after.passages[2] == other.passages[0] and after.passage_ids[2] == other.passage_ids[0]
        assert RELATION[("probe", other.test_id)] == RELATION[("probe", before.test_id)]
        assert other.answers != before.answers                   # Ann (baker) never gets Cy (baker)
    assert out[0].extra["distractor_of"] in (1, 3) and out[4].extra["distractor_of"] == 5


def test_the_share_the_datasets_and_the_seed_decide_exactly_which_tasks_change():
    assert train_data.with_distractors(TASKS, RELATION, 0.0, 42, ["probe"]) == TASKS
    assert all("distractor_of" not in t.extra for t in train_data.with_distractors(TASKS, RELATION, 1.0, 42, ["popqa"]))
    half = train_data.with_distractors(TASKS * 20, {**RELATION}, 0.5, 42, ["probe"])
    changed = sum("distractor_of" in t.extra for t in half)
    assert 30 <= changed <= 90                                   # about half of 120, seeded
    assert half == train_data.with_distractors(TASKS * 20, RELATION, 0.5, 42, ["probe"])
    assert [t.extra.get("distractor_of") for t in half] != \
        [t.extra.get("distractor_of") for t in train_data.with_distractors(TASKS * 20, RELATION, 0.5, 43, ["probe"])]
    unknown = train_data.with_distractors(TASKS, {}, 1.0, 42, ["probe"])           # no relation known: unchanged
    assert unknown == TASKS and all("distractor_of" not in t.extra for t in unknown)


def test_relations_come_from_the_probe_files_and_popqas_prop_column(tmp_path):
    artifacts.write_json(tmp_path / "train.json", [{"question": "q", "answer": ["a"], "relation": "colour"},
                                                    {"question": "r", "answer": ["b"]}])
    assert relations.relations("probe", tmp_path, "train") == {0: "colour"}
    popqa = relations.relations("popqa", paths.sample_dir() / "popqa", "train")
    assert popqa[0] == "occupation" and popqa[500] and len(popqa) == 1000
    assert relations.relations("hotpotqa", paths.sample_dir() / "hotpotqa", "train") == {}


def test_a_share_without_datasets_is_refused():
    with pytest.raises(config.ConfigError, match="distractor_datasets"):
        config.load_preset("tiny", {"train": {"distractor_share": 0.5}})
    with pytest.raises(config.ConfigError, match=r"in \[0, 1\]"):
        config.load_preset("tiny", {"train": {"distractor_share": 1.5, "distractor_datasets": ["probe"]}})


def test_a_run_with_distractors_reads_the_relations_of_its_augmented_files(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    folder = tmp_path / "raw"
    artifacts.write_json(folder / "train.json", [{"question": t.question, "answer": list(t.answers),
                                                  "relation": RELATION[("probe", t.test_id)]} for t in TASKS])
    records = [{"test_id": t.test_id, "question": t.question, "answers": list(t.answers),
                "passages": [x for _, x in t.passages], "titles": [x for x, _ in t.passages],
                "passage_ids": list(t.passage_ids)} for t in TASKS]
    artifacts.write_json(paths.augmented_file("probe", "train_all"), records)
    args = config.load_preset("tiny", {"train": {"distractor_share": 1.0, "distractor_datasets": ["probe"],
                                                 "validation_size": 1}}).train
    with pytest.raises(ValueError, match="no relation is known"):        # no sidecar naming the raw folder
        train_data.training_data(["probe"], "train_all", args)
    artifacts.write_json(paths.augmented_file("probe", "train_all").with_suffix(".meta.json"),
                         {"config": {"data_dir": str(folder), "split": "train"}})
    data = train_data.training_data(["probe"], "train_all", args)
    every = data.train + data.validation
    assert len(every) == 6 and all("distractor_of" in t.extra for t in every)
