"""The report of meta-training with distractor passages (``python -m experiments.binding_training``): for each run,
whose value its answers carry on the binding probe's dev families (position-free passage order), whether the name
changes what its update predicts, regrad against shift and no_update there, and regrad on the probe and PopQA
paired with the reference run's regrad (a gain in binding that costs injection elsewhere shows).

The target: regrad's asked-person share at least twice its distractor share on the dev families. No model loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from regrad_lib.data import probe_binding
from regrad_lib.io import paths
from regrad_lib.reporting import binding_report, effects
from regrad_lib.reporting.analysis import Missing

TARGET_RATIO = 2.0


def _evaluation(split: str) -> str | None:
    return None if split == "dev" else split.replace("_", "-")


def _shares(run: str, split: str, methods: Sequence[str]) -> binding_report.BindingTable | Missing:
    questions = probe_binding.questions(paths.sample_dir() / "probe_binding", "dev")
    out = []
    for method in methods:
        try:
            rows = effects.rows_by_id(run, "probe_binding", method, evaluation=_evaluation(split))
        except FileNotFoundError:
            continue
        out.append(binding_report.method_shares(method, list(rows.values()), questions))
    return binding_report.BindingTable(out) if out else Missing(f"{run}: probe_binding ({split}) not evaluated")


def _cell(e: effects.Effect) -> str:
    acc = e.acc
    return (f"{acc.em_a:.1f} vs {acc.em_b:.1f} (Δ {acc.difference:+.1f}, {acc.only_a}/{acc.only_b}, p = "
            f"{effects.format_p(acc.p)}); NLL {e.nll.mean:+.2f} ± {e.nll.se:.2f}")


def markdown(runs: Sequence[str], splits: Sequence[tuple[str, str]], reference: str = "demo") -> str:
    parts = []
    summary = []
    for run in runs:
        parts.append(f"### `{run}`\n")
        free = _shares(run, "dev_position_free", ["regrad", "no_update", "shift", "rag", "regrad_icl"])
        ranked = _shares(run, "dev", ["regrad", "rag", "regrad_icl"])
        parts += ["Binding probe, dev families, passages in one order per family (position-free):", "", str(free), ""]
        if not isinstance(ranked, Missing):
            parts += ["The same with the passages in BM25's rank order (the asked member's first: a position cue for "
                      "the prompt):", "", str(ranked), ""]
        regrad = next((s for s in free if s.method == "regrad"), None) if not isinstance(free, Missing) else None
        if regrad is not None:
            summary.append((run, regrad))
        names = binding_report.name_effect(run, _evaluation("dev_position_free"))
        parts += ["Does the name change what the update predicts (answer NLL, mean ± SE):", "", str(names), ""]
        table = effects.effect_table(run, ["probe_binding"], evaluation=_evaluation("dev_position_free"))
        if not isinstance(table, Missing):
            parts += [str(table), "", effects.verdict(table), "", effects.verdict(table, "no_update"), ""]
        if run != reference:
            rows = []
            for dataset, split in splits:
                if dataset == "probe_binding" and split == "dev":
                    continue
                try:
                    a = effects.rows_by_id(run, dataset, "regrad", "answer_nll", _evaluation(split))
                    b = effects.rows_by_id(reference, dataset, "regrad", "answer_nll", _evaluation(split))
                except FileNotFoundError:
                    continue
                rows.append(f"| {dataset} ({split}) | {_cell(effects.paired_rows(a, b, dataset, run, reference))} |")
            if rows:
                parts += [f"regrad of `{run}` against regrad of `{reference}` on the same questions (acc, points, "
                          "only one / only the other, McNemar p; answer NLL difference ± SE):", "",
                          "| dataset | acc and answer NLL |", "|---|---|", *rows, ""]
    if summary:
        parts.insert(0, "\n".join(["Target: regrad's asked-person share ≥ 2 × its distractor share on the dev "
                                   "families.", "", "| run | asked | distractor | asked : distractor | target met | "
                                   "families bound |", "|---|---:|---:|---:|---|---:|"] +
                                  [f"| `{run}` | {100 * s.asked / s.n:.1f}% | {100 * s.distractor / s.n:.1f}% | "
                                   f"{s.ratio:.2f} | {'yes' if s.ratio >= TARGET_RATIO else 'no'} | "
                                   f"{s.bound}/{s.families} |" for run, s in summary]) + "\n")
    return "\n".join(parts).rstrip() + "\n"
