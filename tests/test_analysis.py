"""analysis: readers, score table, training log, alpha, bank sizes (paired effects: test_effects.py)."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from regrad_lib.bank import on_disk
from regrad_lib.bank.writer import BankWriter
from regrad_lib.io import paths, run_state
from regrad_lib.io.artifacts import write_jsonl, write_text
from regrad_lib.reporting import analysis

SUMMARY = """dataset,method,em,f1,precision,recall,nll,n
popqa,closed_book,2.0,5.0,6.0,7.0,3.1,3
popqa,rag,10.0,20.0,21.0,22.0,2.0,3
popqa,regrad,4.0,8.5,9.0,9.5,2.9,3
popqa,shift,2.0,6.0,6.5,7.0,3.0,3
popqa,no_update,2.0,5.5,6.0,6.5,3.05,3
hotpotqa,closed_book,1.0,3.0,3.0,3.0,4.0,2
hotpotqa,regrad,2.0,4.0,4.0,4.0,3.8,2
"""

SWEEPS = """dataset,method,gamma,topk,em,f1,precision,recall,nll,n
popqa,regrad,0.5,3,3,7,7,7,3.0,3
popqa,regrad,1.0,3,4,8.5,9,9.5,2.9,3
popqa,regrad,2.0,3,1,4,4,4,3.5,3
hotpotqa,regrad,0.5,3,1,2,2,2,4,2
hotpotqa,regrad,1.0,3,2,4,4,4,3.8,2
popqa,regrad,1.0,1,2,5,5,5,3.2,3
popqa,rag,1.0,3,10,20,21,22,2.0,3
"""

# answer_nll per test_id: regrad, shift, no_update (popqa)
NLL = {"regrad": {"q1": 1.0, "q2": 2.0, "q3": 3.0, "q4": 0.5},
       "shift": {"q1": 1.5, "q2": 1.5, "q3": 4.0},           # q4 unmatched
       "no_update": {"q1": 1.0, "q2": 2.5, "q3": 3.5, "q4": 1.5}}


def write_run(run: str, datasets=("popqa",), sweeps: bool = True, log: bool = True, bank: bool = True) -> None:
    """A small synthetic run: summary.csv, sweeps.csv, predictions, training log, meta state, a bank."""
    write_text(paths.summary_file(run), SUMMARY)
    if sweeps:
        write_text(paths.sweeps_file(run), SWEEPS)
    for dataset in datasets:
        for method, nll in NLL.items():
            write_jsonl(paths.predictions_file(run, dataset, method),
                        [{"test_id": k, "question": f"Q {k}?", "answers": ["x"], "prediction": "y",
                          "passage_ids": ["1", "2", "3"], "answer_nll": v} for k, v in nll.items()])
    names = ["model.layers.2.self_attn.q_proj.lora_A", "model.layers.2.self_attn.q_proj.lora_B",
             "model.layers.10.mlp.gate_proj.lora_A", "model.layers.10.mlp.gate_proj.lora_B"]
    if log:
        rows = [{"kind": "train", "step": s, "loss": 3.0 - 0.2 * s, "lr": 1e-4, "grad_norm": 1.0, "tasks_seen": 4 * s,
                 "epoch": 0, "alpha": {n: 0.01 * (i + 1) for i, n in enumerate(names)}, "skipped_nonfinite": 0,
                 "elapsed_s": s} for s in range(1, 6)]
        rows.insert(3, {"kind": "eval", "step": 3, "eval_loss": 2.5, "eval_em": 0.0, "eval_f1": 4.0, "n": 3,
                        "best": True})
        rows.append({"kind": "eval", "step": 5, "eval_loss": 2.6, "eval_em": 0.0, "eval_f1": 3.0, "n": 3,
                     "best": False})
        write_jsonl(paths.training_log_file(run), rows)
        state = {f"alpha.{n.replace('.', '__')}": torch.tensor(0.01 * (i + 1)) for i, n in enumerate(names)}
        state["phi.x"] = torch.zeros(2)
        paths.output_dir(run).mkdir(parents=True, exist_ok=True)
        save_file(state, str(paths.meta_state_file(run)))
    if bank:
        phi = {"m.0.lora_A": torch.zeros(2, 3), "m.0.lora_B": torch.zeros(4, 2)}  # 14 numbers per passage
        for dataset, scheme in zip(datasets, ("bf16", "fp32")):
            head = on_disk.header(model="tiny-llama", model_id="tiny-llama", model_revision=None,
                                  preset="tiny", phi=phi, meta_hash="m", scheme=scheme)
            writer = BankWriter.open(paths.bank_dir(3, run, dataset, "dev", scheme), head,
                                                   shard_bytes=2 * 14 * 4)
            writer.append([f"p{i}" for i in range(4)], torch.ones(4, 14))
            writer.close()


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    write_run("r", datasets=("popqa", "hotpotqa"))
    return "r"


def test_read_summary_types_and_missing(run, tmp_path):
    rows = analysis.read_summary(run)
    assert len(rows) == 7 and rows[0] == analysis.Score("popqa", "closed_book", 2.0, 5.0, 6.0, 7.0, 3.1, 3)
    with pytest.raises(FileNotFoundError, match=r"results/other/summary.csv not found: .*05_evaluate"):
        analysis.read_summary("other")


def test_read_summary_bad_value_names_line_and_field(run):
    write_text(paths.summary_file(run), "dataset,method,em,f1,precision,recall,nll,n\npopqa,rag,1,abc,1,1,1,3\n")
    with pytest.raises(ValueError, match=r"summary.csv line 2: field 'f1' = 'abc'"):
        analysis.read_summary(run)
    write_text(paths.summary_file(run), "dataset,method,em,f1\npopqa,rag,1,2\n")
    with pytest.raises(ValueError, match=r"lacks \['precision', 'recall', 'nll', 'n'\]"):
        analysis.read_summary(run)


def test_empty_nll_is_nan(run):
    write_text(paths.summary_file(run), "dataset,method,em,f1,precision,recall,nll,n\npopqa,rag,1,2,3,4,,3\n")
    assert math.isnan(analysis.read_summary(run)[0].nll)


def test_score_table_pivot_and_order(run):
    table = analysis.score_table(analysis.read_summary(run))
    assert table.datasets == ["popqa", "hotpotqa"]
    assert table.methods == ["closed_book", "rag", "regrad", "shift", "no_update"]
    assert table.header()[:4] == ["dataset", "closed_book acc", "closed_book EM", "closed_book F1"]
    # this summary.csv was written before answer accuracy existed: acc reads as not measured
    assert table.rows()[0][:7] == ["popqa", "–", "2.0", "5.0", "–", "10.0", "20.0"]
    assert table.rows()[1][4:7] == ["–", "–", "–"]  # no rag on hotpotqa
    md = table.to_markdown().splitlines()
    assert len(md) == 4 and md[2].startswith("| popqa | – | 2.0 | 5.0 |")
    sub = analysis.score_table(analysis.read_summary(run), datasets=["hotpotqa"], methods=["regrad"])
    assert sub.rows() == [["hotpotqa", "–", "2.0", "4.0"]]


def test_score_table_shows_answer_accuracy_beside_em(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    write_text(paths.summary_file("acc"), "dataset,method,em,acc,f1,precision,recall,nll,n\n"
                                           "popqa,rag,6.7,50.0,26.4,20.0,40.0,2.1,30\n")
    [row] = analysis.read_summary("acc")
    assert (row.em, row.acc, row.f1) == (6.7, 50.0, 26.4)
    assert analysis.score_table([row]).rows() == [["popqa", "50.0", "6.7", "26.4"]]


def test_sweeps_and_sweep_selection(run):
    rows = analysis.read_sweeps(run)
    assert rows[0].gamma == 0.5 and rows[0].topk == 3
    gamma = analysis.sweep_series(rows, "gamma", topk=3)
    assert [(r.dataset, r.gamma) for r in gamma] == [("hotpotqa", 0.5), ("hotpotqa", 1.0), ("popqa", 0.5),
                                                     ("popqa", 1.0), ("popqa", 2.0)]
    topk = analysis.sweep_series(rows, "topk", gamma=1.0)
    assert [(r.dataset, r.topk) for r in topk] == [("popqa", 1), ("popqa", 3)]
    assert isinstance(analysis.sweep_series(rows, "topk", gamma=0.5), analysis.Missing)
    with pytest.raises(ValueError, match="vary='lr'"):
        analysis.sweep_series(rows, "lr")


def test_missing_sweeps_is_a_note(run):
    paths.sweeps_file(run).unlink()
    got = analysis.optional(analysis.read_sweeps, run)
    assert isinstance(got, analysis.Missing) and "results/r/sweeps.csv not found" in got.message
    assert "sweep" in got._repr_markdown_()
    assert analysis.sweep_series(got, "gamma") is got


def test_training_log_and_alpha(run):
    rows = run_state.read_training_log(run)
    assert len(rows) == 7 and sum(r["kind"] == "eval" for r in rows) == 2
    alpha = run_state.read_alpha(run)
    assert alpha == pytest.approx({"model.layers.2.self_attn.q_proj.lora_A": 0.01,
                                   "model.layers.2.self_attn.q_proj.lora_B": 0.02,
                                   "model.layers.10.mlp.gate_proj.lora_A": 0.03,
                                   "model.layers.10.mlp.gate_proj.lora_B": 0.04})
    assert list(alpha)[1:3] == ["model.layers.2.self_attn.q_proj.lora_B", "model.layers.10.mlp.gate_proj.lora_A"]
    with paths.training_log_file(run).open("a") as f:
        f.write(json.dumps({"step": 9}) + "\n")
    with pytest.raises(ValueError, match="line 8 lacks .kind."):
        run_state.read_training_log(run)
    with pytest.raises(FileNotFoundError, match="outputs/none/training_log.jsonl not found: .*03_train"):
        run_state.read_training_log("none")


def test_bank_sizes(run):
    sizes = analysis.bank_sizes(3, run, ["popqa", "hotpotqa", "nq"], "dev")
    assert [(s.dataset, s.scheme, s.count, s.bytes_per_passage) for s in sizes] == [
        ("popqa", "bf16", 4, 28 + 8), ("hotpotqa", "fp32", 4, 56 + 8)]    # values + an 8-byte checksum
    folder = paths.bank_dir(3, run, "popqa", "dev", "bf16")
    assert sizes[0].bytes_on_disk == sum(f.stat().st_size for f in folder.iterdir()) and sizes[0].path == folder
    missing = analysis.bank_sizes(5, run, ["popqa"], "dev")
    assert isinstance(missing, analysis.Missing) and "offline/5/r" in missing.message


def test_analyze_config(run):
    cfg = analysis.AnalyzeConfig(run="demo", datasets=["popqa"], topk=3, split="dev")
    assert cfg.datasets == ("popqa",)
    for bad in ({"datasets": "popqa"}, {"datasets": []}, {"topk": 0}, {"topk": True}, {"run": ""}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            analysis.AnalyzeConfig(**{"run": "demo", "datasets": ["popqa"], **bad})


def test_read_summary_selects_datasets(run, caplog):
    rows = analysis.read_summary(run, datasets=["hotpotqa", "nq"])
    assert {r.dataset for r in rows} == {"hotpotqa"} and len(rows) == 2
    assert "no rows for ['nq']" in caplog.text


@pytest.mark.parametrize("row, field", [("popqa,rag,nan,2,3,4,1.5,3", "em"), ("popqa,rag,1,2,,4,1.5,3", "precision"),
                                        ("popqa,rag,1,inf,3,4,1.5,3", "f1")])
def test_a_score_that_is_no_number_is_refused(run, row, field):
    """summary.csv with em `nan` was read (the method then dropped out of every mean without a word)."""
    write_text(paths.summary_file(run), f"dataset,method,em,f1,precision,recall,nll,n\n{row}\n")
    with pytest.raises(ValueError, match=rf"summary.csv line 2: field '{field}' .*re-run 05_evaluate"):
        analysis.read_summary(run)
    write_text(paths.summary_file(run), "dataset,method,em,f1,precision,recall,nll,n,acc\n"
                                           "popqa,rag,1,2,3,4,,3,\npopqa,regrad,1,2,3,4,1.5,3,50\n")
    older, newer = analysis.read_summary(run)            # a row merged from a file written before accuracy
    assert math.isnan(older.acc) and math.isnan(older.nll) and newer.acc == 50.0
