"""Which relation each question asks, where a dataset says so: the invented-people probes' ``relation`` field and
PopQA's ``prop`` column. Meta-training with distractors (:func:`regrad_lib.training.train_data.with_distractors`)
puts another question's passage of the same relation into a question's top-k, so that its update has to bind the
value to the entity asked; no other code needs relations.

Keys are the augmented records' ``test_id``: a probe record's position in its split file, a PopQA row's index in
``popQA.tsv`` (02_augment numbers them so).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from regrad_lib.io import artifacts, paths

PROBES = ("probe", "probe_binding", "probe_transfer", "probe_wide", "probe_para")


def relations(dataset: str, data_dir: str | Path, split: str) -> dict[int, str]:
    """``{test_id: relation}`` of ``split`` of ``dataset`` read from ``data_dir``; ``{}`` for a dataset whose files
    name no relation."""
    folder = paths.resolve(data_dir)
    if dataset in PROBES:
        file = folder / f"{split}.json"
        if not file.is_file():
            return {}
        return {i: r["relation"] for i, r in enumerate(artifacts.read_json(file)) if r.get("relation")}
    if dataset == "popqa":
        file = folder / "popQA.tsv"
        if not file.is_file():
            return {}
        with io.StringIO(artifacts.read_text(file), newline="") as f:
            rows = csv.DictReader(f, delimiter="\t")
            return {index: row["prop"] for index, row in enumerate(rows) if row.get("prop")}
    return {}


def of_augmented(dataset: str, name: str) -> dict[int, str]:
    """The relations of the questions of the augmented file ``data/augmented/<dataset>/<name>.json``: its sidecar
    names the dataset folder and split 02_augment read."""
    meta_file = paths.augmented_file(dataset, name).with_suffix(".meta.json")
    if not meta_file.is_file():
        return {}
    request = artifacts.read_json(meta_file).get("config", {})
    if "data_dir" not in request or "split" not in request:
        return {}
    return relations(dataset, request["data_dir"], request["split"])
