"""Augmented files are checked where training, 04_encode and 05_evaluate read them (regrad_lib.core.task_batches.load):
each field of each record, the lengths of the passage lists, one test_id per question, one value per JSON key."""

from __future__ import annotations

import json

import pytest

from regrad_lib.core import task_batches
from regrad_lib.io import artifacts, paths

DATASET = "tasksqa"


def _records(n: int = 4) -> list[dict]:
    return [{"test_id": i, "question": f"Where is tower {i}?", "answers": [f"town {i}"],
             "passages": [f"Tower {i} is in town {i}.", f"Town {i} is old.", "Towers are tall."],
             "passage_ids": [f"{i}a", f"{i}b", "t"], "titles": [f"Tower {i}", f"Town {i}", "Towers"],
             "scores": [3.0, 2.0, 1.0]} for i in range(n)]


def _load(records, **kwargs):
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), records)
    return task_batches.load(DATASET, "dev", 3, **kwargs)


def test_intact_records_load():
    tasks = _load(_records())
    assert [t.test_id for t in tasks] == [0, 1, 2, 3]
    assert tasks[1].passages[0] == ("Tower 1", "Tower 1 is in town 1.") and tasks[1].passage_ids == ("1a", "1b", "t")


@pytest.mark.parametrize("field, value, message", [
    ("answers", "Berlin", r"record 2: field 'answers' must be a list of strings, got str 'Berlin'"),
    ("answers", ["Berlin", 3], r"record 2: field 'answers\[1\]' must be a non-empty string, got int"),
    ("passage_ids", ["2a", "2b"], r"record 2: field 'passage_ids' has 2 entries but 'passages' 3"),
    ("titles", ["only one"], r"record 2: field 'titles' has 1 entries but 'passages' 3"),
    ("passages", "one passage", r"record 2: field 'passages' must be a list of strings"),
    ("question", "", r"record 2: field 'question' must be a non-empty string"),
    ("test_id", "2", r"record 2: field 'test_id' must be an integer, got str '2'"),
    ("test_id", True, r"record 2: field 'test_id' must be an integer, got bool True"),
])
def test_a_damaged_record_is_refused_naming_the_file_record_and_field(field, value, message):
    """`answers: "Berlin"` was scored against the letters B, e, r, l, i, n; `passage_ids` shorter than `passages`
    made regrad sum 2 gradients at top-3; `titles` of length 1 cut every question to one passage."""
    records = _records()
    records[2][field] = value
    with pytest.raises(ValueError, match=rf"data/augmented/{DATASET}/dev.json: {message}"):
        _load(records)


def test_two_questions_with_one_test_id_are_refused():
    """Duplicate test_ids reached 05 and were refused only by 06."""
    records = _records()
    records[3]["test_id"] = 1
    with pytest.raises(ValueError, match=r"dev.json: records 1 and 3 have the same test_id 1"):
        _load(records)
    assert [t.test_id for t in _load(records, end=3)] == [0, 1, 2]      # the questions used are distinct


def test_a_key_given_twice_is_refused():
    text = json.dumps(_records()).replace('"question": "Where is tower 1?"',
                                          '"question": "First?", "question": "Second?"', 1)
    paths.augmented_file(DATASET, "dev").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev.json: key 'question' appears twice in one JSON object \('First\?', "
                                         r"then 'Second\?'\)"):
        task_batches.load(DATASET, "dev", 3)


def test_negative_bounds_are_refused():
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), _records())
    with pytest.raises(ValueError, match=r"parameter end \(the limit of questions\) = -1 must be >= 0"):
        task_batches.load(DATASET, "dev", 3, end=-1)
    with pytest.raises(ValueError, match=r"parameter start = -2 must be >= 0"):
        task_batches.load(DATASET, "dev", 3, start=-2)
