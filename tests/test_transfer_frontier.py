"""experiments/transfer_frontier.py's comparison of each variant with the first run (paired by question, by hand)
and its table."""

import math
import re

from experiments import transfer_frontier as frontier
from regrad_lib.reporting.effects import mcnemar_exact


def _run(name, by_id, **extra):
    em = [e for e, _ in by_id.values()]
    return {"run": name, "train_datasets": ["popqa", "probe"], "steps": 30, "alpha_learning_rate": 1.0,
            "wall_s": 500.0, "best_eval": {"step": 30, "eval_loss": 1.25},
            "regrad": {"em": 100 * sum(em) / len(em), "em_closed": 50.0, "em_invented": 0.0, "nll": 2.0,
                       "own_name_share": 0.0, "fragment_share": 0.25, "by_id": by_id}, **extra}


def test_against_first_is_paired_by_question():
    base = _run("demo", {"0": (1.0, 1.0), "1": (0.0, 3.0), "2": (0.0, 2.0), "3": (1.0, 0.5)},
                rag={"em": 25.0, "em_closed": 50.0, "em_invented": 0.0, "nll": 1.5})
    # question 9 is not in the first run: left out of the pairing
    other = _run("tf-x", {"0": (0.0, 2.0), "1": (1.0, 1.0), "2": (1.0, 1.5), "3": (1.0, 0.5), "9": (1.0, 0.1)})
    frontier.against_first([base, other])
    d = [1.0, -2.0, -0.5, 0.0]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    assert other["vs_first"] == (f"{mean:+.2f} ± {se:.2f} (2/4); EM 2 / 1, p = {mcnemar_exact(2, 1):.2g}")
    assert "vs_first" not in base


def test_markdown_rows_and_rag_once():
    base = _run("demo", {"0": (1.0, 1.0), "1": (0.0, 3.0)}, rag={"em": 25.0, "em_closed": 50.0,
                                                                  "em_invented": 0.0, "nll": 1.5})
    other = _run("tf-x", {"0": (0.0, 2.0), "1": (1.0, 1.0)}, gamma_sweep={"0.5": {"em": 10.0, "nll": 3.0}})
    frontier.against_first([base, other])
    text = frontier.markdown_table([base, other], 60)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    rows = [line for line in lines if line.startswith("| demo") or line.startswith("| tf-x")]
    assert len(rows) == 2 and all(r.count("|") == header.count("|") for r in rows)
    assert "| demo | popqa, probe | 30 | 1 | 500 | 1.250 (step 30) | 50.0 (50.0 / 0.0) |" in rows[0]
    assert rows[0].endswith("| (the baseline) |") and "0.5: 10.0 / 3.00" in rows[1]
    assert text.count("rag (the base model") == 1 and "EM 25.0 (50.0 / 0.0), answer NLL 1.50." in text
    assert "60 validation questions" in text


def test_wide_data_is_apart_from_the_probe_and_the_transfer_split():
    """Training-only relations: no template, name or invented answer of the probe or of the transfer split; every
    answer stands in its passage; half the passages are narratives of 74–90+ words; deterministic in the seed."""
    from regrad_lib.data import probe, probe_transfer

    people, records = frontier.wide_data(seed=3, n_people=40)
    assert (people, records) == frontier.wide_data(seed=3, n_people=40)
    assert len(records) == 80 and {r["answer_type"] for r in records} == {"closed", "invented"}
    templates = {q for _, _, qs in frontier.WIDE_RELATIONS.values() for q in qs}
    theirs = {r.question for r in probe.RELATIONS} | {q for r in probe_transfer.RELATIONS for q in r.questions}
    assert not templates & theirs
    passages = {p.passage_id: p for p in people}
    other_words = set(re.findall(r"[a-z]+", (probe.passages_file().read_text(encoding="utf-8")
                                             + probe.transfer_passages_file().read_text(encoding="utf-8")).lower()))
    for r in records:
        person = passages[r["passage_id"]]
        assert r["answer"][0] in person.passage and r["entity"] == person.name
        if r["answer_type"] == "invented":
            assert not {w.lower() for w in r["answer"][0].split()} & other_words
        assert r["question"] not in theirs
    assert not {w.lower() for p in people for w in p.name.split()} & other_words
    lengths = [len(p.passage.split()) for p in people]
    assert sum(n >= 74 for n in lengths) == 20 and max(lengths[0::2]) < 40


def test_variants_name_their_data():
    assert frontier.VARIANTS["demo"] is None
    for overrides, datasets in (v for v in frontier.VARIANTS.values() if v):
        assert set(datasets.split(",")) <= {"popqa", "hotpotqa", "probe", "probe_para", "probe_wide"}
        assert isinstance(overrides, dict)
