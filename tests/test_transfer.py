"""transfer: groups in template / out of template, EM per method and regrad − shift NLL per group (hand-computed),
the verdict's rag comparison and targets, and the echo measure."""

import json
import math

import pytest

from regrad_lib.io import paths
from regrad_lib.io.artifacts import write_jsonl
from regrad_lib.reporting import analysis, transfer_report

PROBE = [{"question": "Which city is Ab Cd originally from?", "answer": ["Paris"], "relation": "birthplace",
          "entity": "Ab Cd"},
         {"question": "Which sport does Ef Gh practise?", "answer": ["golf"], "relation": "sport", "entity": "Ef Gh"}]
TRANSFER = [{"question": "Who taught Ululan Moranford?", "answer": ["Zoterua Bek"], "relation": "mentor",
             "entity": "Ululan Moranford", "answer_type": "invented"},
            {"question": "What language does Iv Ko speak?", "answer": ["Greek"], "relation": "language",
             "entity": "Iv Ko", "answer_type": "closed"},
            {"question": "Which ship does Ma No own?", "answer": ["Velira"], "relation": "vessel",
             "entity": "Ma No", "answer_type": "invented"}]
# method -> dataset -> [(prediction, answer_nll)] in test_id order
PRED = {
    "rag": {"probe": [("Paris", 0.1), ("golf", 0.2)], "probe_transfer": [("Zoterua Bek", 0.1), ("Greek", 0.1),
                                                                          ("Velira", 0.3)]},
    "regrad": {"probe": [("Paris", 1.0), ("tennis", 2.0)], "probe_transfer": [("Ul", 3.0), ("Greek", 1.0),
                                                                              ("Vel", 2.0)]},
    "shift": {"probe": [("Lima", 2.0), ("tennis", 2.5)], "probe_transfer": [("Ululan", 4.0), ("Dutch", 1.5),
                                                                            ("Ma No", 3.0)]},
}


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    root = tmp_path / "data"
    for name, records in (("probe", PROBE), ("probe_transfer", TRANSFER)):
        (root / name).mkdir(parents=True)
        (root / name / "dev.json").write_text(json.dumps(records))
    for method, by_dataset in PRED.items():
        for dataset, rows in by_dataset.items():
            gold = PROBE if dataset == "probe" else TRANSFER
            write_jsonl(paths.predictions_file("r", dataset, method),
                        [{"test_id": i, "question": g["question"], "answers": g["answer"], "prediction": p,
                          "answer_nll": v} for i, ((p, v), g) in enumerate(zip(rows, gold))])
    return "r", str(root)


def test_groups_and_table_hand_computed(run):
    name, root = run
    groups = transfer_report.question_groups(["probe", "probe_transfer"], root)
    assert groups == {("probe", "0"): "in template", ("probe", "1"): "held-out relation (sport)",
                      ("probe_transfer", "0"): "out of template, invented answers",
                      ("probe_transfer", "1"): "out of template, closed answers",
                      ("probe_transfer", "2"): "out of template, invented answers"}
    table = transfer_report.transfer_table(name, ["probe", "probe_transfer"], root)
    assert table.methods == ["rag", "regrad", "shift"]                  # the methods with predictions
    rows = {r.group: r for r in table}
    invented = rows["out of template, invented answers"]
    assert invented.n == 2 and invented.em == {"rag": 100.0, "regrad": 0.0, "shift": 0.0}
    # regrad − shift NLL on the two invented questions: -1.0, -1.0 → mean -1, SE 0
    assert invented.nll_shift.mean == pytest.approx(-1.0) and invented.nll_shift.se == pytest.approx(0.0)
    assert (invented.rag_only, invented.regrad_only) == (2, 0) and invented.p_rag == pytest.approx(0.5)
    closed = rows["out of template, closed answers"]
    assert closed.em == {"rag": 100.0, "regrad": 100.0, "shift": 0.0} and closed.rag_only == 0
    assert rows["in template"].em["regrad"] == 100.0 and rows["held-out relation (sport)"].em["regrad"] == 0.0
    assert "| out of template, invented answers | 2 | 100.0 | 0.0 | 0.0 | -1.00 ± 0.00 (2/2) |" in str(table)


def test_verdict_names_where_regrad_is_below_rag_and_the_targets(run):
    name, root = run
    text = transfer_report.verdict(transfer_report.transfer_table(name, ["probe", "probe_transfer"], root))
    assert "regrad is below rag (the same passages in the prompt) on held-out relation (sport) (EM 0.0 vs 100.0" in text
    assert "out of template, invented answers (EM 0.0 vs 100.0, McNemar p = 0.5)" in text
    assert "regrad matches or passes rag on in template (EM 100.0 vs 100.0" in text
    assert "Out of template, closed answers: regrad − shift = +100.0 EM points, half of rag = 50.0: the target " \
           "(≥ +20 and ≥ half of rag) is reached" in text
    assert "Out of template, invented answers: regrad − shift = +0.0 EM points" in text and "is not reached" in text
    for method in PRED:                     # the probe not evaluated: its groups are left out, not shown empty
        paths.predictions_file(name, "probe", method).unlink()
    only = transfer_report.transfer_table(name, ["probe", "probe_transfer"], root)
    assert [r.group for r in only] == ["out of template, invented answers", "out of template, closed answers"]
    missing = transfer_report.transfer_table(name, ["probe"], root)
    assert isinstance(missing, analysis.Missing) and "probe_transfer" in missing.message
    assert transfer_report.verdict(missing).startswith("No transfer verdict")


def test_verdict_reads_regrad_icl_against_rag(run):
    """regrad_icl's out-of-template target (≥ rag), with McNemar on the questions one of the two answers."""
    name, root = run
    table = transfer_report.transfer_table(name, ["probe", "probe_transfer"], root)
    assert "regrad_icl" not in transfer_report.verdict(table)
    icl = {"probe": [("Paris", 0.1), ("golf", 0.1)],
           "probe_transfer": [("Zoterua Bek", 0.1), ("Dutch", 0.1), ("Velira", 0.1)]}
    for dataset, rows in icl.items():
        gold = PROBE if dataset == "probe" else TRANSFER
        write_jsonl(paths.predictions_file(name, dataset, "regrad_icl"),
                    [{"test_id": i, "question": g["question"], "answers": g["answer"], "prediction": p,
                      "answer_nll": v} for i, ((p, v), g) in enumerate(zip(rows, gold))])
    table = transfer_report.transfer_table(name, ["probe", "probe_transfer"], root)
    rows = {r.group: r for r in table}
    assert rows["out of template, invented answers"].icl_rag == (0, 0)
    assert rows["out of template, closed answers"].icl_rag == (0, 1)        # rag answers Greek, regrad_icl not
    text = transfer_report.verdict(table)
    assert ("Out of template, closed answers: regrad − shift" in text and "There regrad_icl (the update and the "
            "passages) answers 0.0 against rag's 100.0 (McNemar p = 1): the target (regrad_icl ≥ rag) is not reached"
            in text)
    assert "answers 100.0 against rag's 100.0 (McNemar p = 1): the target (regrad_icl ≥ rag) is reached" in text


@pytest.mark.parametrize("prediction, kind", [
    ("Zoterua Bek", "correct"), ("Ul", "name"), ("Ululan Moranford", "name"), ("moranford", "name"),
    ("Zot", "fragment"), ("Zotarino", "fragment"), ("Bek Zot", "fragment"), ("Zo", "fragment"), ("Xy Ko", "other"),
    ("He was taught by Zoterua Bek.", "verbose"), ("Zoterua Bek Ululan", "verbose"),
    ("", "empty"), ("the", "empty"), ("Paris", "other")])
def test_echo_kind(prediction, kind):
    assert transfer_report.echo_kind(prediction, "Ululan Moranford", ["Zoterua Bek"]) == kind


def test_echo_table_counts(run):
    name, root = run
    table = transfer_report.echo_table(name, ["probe", "probe_transfer"], root, methods=("regrad", "shift"))
    # regrad on invented: "Ul" (own name), "Vel" (answer fragment); shift: "Ululan" (name), "Ma No" (name)
    assert table.share("regrad", "out of template, invented answers", "name") == 0.5
    assert table.share("regrad", "out of template, invented answers", "fragment") == 0.5
    assert table.share("shift", "out of template, invented answers", "name") == 1.0
    assert table.share("regrad", "in template", "correct") == 1.0
    assert math.isclose(sum(table.share("regrad", "held-out relation (sport)", k) for k in table.KINDS), 1.0)
    assert isinstance(transfer_report.echo_table(name, ["popqa"], root), analysis.Missing)


def _group(group, regrad, shift, rag):
    return transfer_report.GroupRow(group, 20, {"rag": rag, "regrad": regrad, "shift": shift}, None, 0, 0)


def test_the_target_needs_both_conditions_each_group_meeting_one_or_both():
    """regrad ≥ shift + 20 points AND ≥ half of rag: a group meeting only one of them has not reached it."""
    table = transfer_report.TransferTable(["rag", "regrad", "shift"], [
        _group("out of template, both", 60.0, 30.0, 100.0),       # +30 points, 60 ≥ 50: reached
        _group("out of template, over shift only", 30.0, 0.0, 80.0),   # +30 points, but 30 < 40
        _group("out of template, half of rag only", 45.0, 30.0, 80.0),  # 45 ≥ 40, but only +15 points
        _group("out of template, neither", 10.0, 5.0, 80.0)])
    said = {p.split(":", 1)[0]: p.rstrip(".") for p in transfer_report.verdict(table).split(". ")
            if p.startswith("Out of")}
    assert said["Out of template, both"].endswith("regrad − shift = +30.0 EM points, half of rag = 50.0: the target "
                                                  "(≥ +20 and ≥ half of rag) is reached")
    assert said["Out of template, over shift only"].endswith("= +30.0 EM points, half of rag = 40.0: the target (≥ +20 "
                                                             "and ≥ half of rag) is not reached")
    assert said["Out of template, half of rag only"].endswith("= +15.0 EM points, half of rag = 40.0: the target "
                                                              "(≥ +20 and ≥ half of rag) is not reached")
    assert said["Out of template, neither"].endswith("is not reached")
    assert [k for k, v in said.items() if v.endswith("is reached")] == ["Out of template, both"]
