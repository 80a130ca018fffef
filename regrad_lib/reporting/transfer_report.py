"""How far the update transfers, for 06_analyze: in template against out of template, rag beside regrad, echoes.

Groups of questions (from the datasets' own record fields, matched to predictions by test_id):

- ``in template``: the probe's dev questions of the relations that meta-training asks (same question templates,
  same passage sentences, other people);
- ``held-out relation``: the probe's relation asked only in dev (its passage sentences are seen in training);
- ``out of template, closed answers`` / ``out of template, invented answers``: the transfer split
  (:mod:`regrad_lib.data.probe_transfer`): relations, question templates and passage styles never meta-trained.

:func:`transfer_table` gives each group's EM per method and regrad − shift answer NLL; :func:`verdict` says from
these numbers where regrad is below rag and whether the transfer targets are reached (regrad_icl against rag too);
:func:`echo_table` counts how often an answer is the asked person's own name (or a piece of it) or a truncated piece
of the gold answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from regrad_lib.answering.specs import METHODS
from regrad_lib.data import metrics
from regrad_lib.io import artifacts, paths
from regrad_lib.reporting.analysis import MarkdownTable, Missing
from regrad_lib.reporting.effects import mcnemar_exact, paired_difference, rows_by_id

__all__ = ["echo_kind", "echo_table", "question_groups", "transfer_table", "verdict", "TransferTable", "EchoTable"]

PROBE, TRANSFER = "probe", "probe_transfer"
SHOWN = ("closed_book", "rag", "regrad", "regrad_icl", "shift", "no_update")
# What counts as transfer: out of template, regrad's EM at least shift's + 20 points ...
TARGET_OVER_SHIFT = 20.0
TARGET_SHARE_OF_RAG = 0.5     # ... and at least half of rag's
FRAGMENT_START = 3            # a miss that starts with a gold word's first 3 letters counts as a fragment of it


def _records(data_root: str, dataset: str, split: str) -> list[dict]:
    file = paths.resolve(data_root) / dataset / f"{split}.json"
    if not file.is_file():
        raise FileNotFoundError(f"{paths.relative(file)} not found: the {dataset} questions "
                                f"(python -m regrad_lib.{'probe' if dataset == PROBE else 'probe_transfer'} --write "
                                f"data/sample/{dataset})")
    return artifacts.read_json(file)


def question_groups(datasets: Sequence[str], data_root: str = "data/sample",
                    split: str = "dev") -> dict[tuple[str, str], str]:
    """``{(dataset, test_id): group}`` for the probe and its transfer split among ``datasets``."""
    from regrad_lib.data import probe, probe_transfer

    out: dict[tuple[str, str], str] = {}
    if PROBE in datasets:
        for i, r in enumerate(_records(data_root, PROBE, split)):
            out[(PROBE, str(i))] = (f"held-out relation ({r['relation']})" if r["relation"] in probe.HELD_OUT
                                    else "in template")
    if TRANSFER in datasets:
        out.update({(TRANSFER, k): g for k, g in probe_transfer.groups(_records(data_root, TRANSFER, split)).items()})
    return out


@dataclass(frozen=True)
class GroupRow:
    group: str
    n: int
    em: dict                 # method -> EM ×100
    nll_shift: object        # effects.PairedDifference of regrad − shift, or None
    rag_only: int            # questions rag answers exactly and regrad does not
    regrad_only: int
    icl_rag: tuple | None = None     # (regrad_icl only, rag only) where both were evaluated

    @property
    def p_rag(self) -> float:
        return mcnemar_exact(self.regrad_only, self.rag_only)

    @property
    def p_icl_rag(self) -> float:
        return math.nan if self.icl_rag is None else mcnemar_exact(*self.icl_rag)


@dataclass
class TransferTable(MarkdownTable):
    methods: list[str]
    rows_: list[GroupRow]

    def __iter__(self):
        return iter(self.rows_)

    def header(self) -> list[str]:
        return ["questions", "n", *(f"{m} EM" for m in self.methods), "regrad − shift NLL (lower on)"]

    def rows(self) -> list[list[str]]:
        def nll(d) -> str:
            return "–" if d is None else f"{d.mean:+.2f} ± {d.se:.2f} ({d.n_lower}/{d.n})"
        return [[r.group, str(r.n), *(f"{r.em[m]:.1f}" if m in r.em else "–" for m in self.methods),
                 nll(r.nll_shift)] for r in self.rows_]


def transfer_table(run: str, datasets: Sequence[str], data_root: str = "data/sample", split: str = "dev",
                   evaluation: str | None = None, methods: Sequence[str] = SHOWN) -> TransferTable | Missing:
    """EM of each method and regrad − shift answer NLL per group: in template, held-out relation, out of
    template (closed, invented answers)."""
    if TRANSFER not in datasets:
        return Missing(f"the transfer split was not evaluated: add {TRANSFER!r} to datasets (02, 04, 05, 06; "
                       "README 'How far the effect transfers' gives the command)")
    try:
        groups = question_groups(datasets, data_root, split)
    except FileNotFoundError as e:
        return Missing(str(e))
    rows_of: dict[tuple[str, str], dict] = {}
    for dataset in {d for d, _ in groups}:
        for method in methods:
            try:
                rows_of[(dataset, method)] = rows_by_id(run, dataset, method, "prediction", evaluation)
            except FileNotFoundError:
                pass
    present = [m for m in methods if any((d, m) in rows_of for d in (PROBE, TRANSFER))]
    if "regrad" not in present:
        return Missing(f"no regrad predictions of {TRANSFER} (05_evaluate with datasets including {TRANSFER!r})")
    out = []
    for group in dict.fromkeys(groups.values()):
        keys = [k for k, g in groups.items() if g == group]
        right = {m: {k: metrics.score(rows_of[(k[0], m)][k[1]]["prediction"],
                                      rows_of[(k[0], m)][k[1]]["answers"])["em"] == 1.0
                     for k in keys if (k[0], m) in rows_of and k[1] in rows_of[(k[0], m)]} for m in present}
        if not right.get("regrad"):      # a group whose dataset was not evaluated
            continue
        em = {m: 100 * sum(v.values()) / len(v) for m, v in right.items() if v}
        nll = None
        if "shift" in present:
            a, b = {}, {}
            for d, tid in keys:
                if (d, "regrad") in rows_of and (d, "shift") in rows_of:
                    a[f"{d}/{tid}"] = _nll(rows_of[(d, "regrad")].get(tid))
                    b[f"{d}/{tid}"] = _nll(rows_of[(d, "shift")].get(tid))
            try:
                nll = paired_difference(a, b, group, "regrad", "shift")
            except ValueError:
                nll = None
        rag, mine, icl = right.get("rag", {}), right["regrad"], right.get("regrad_icl", {})
        both = [k for k in mine if k in rag]
        icl_both = [k for k in icl if k in rag]
        out.append(GroupRow(group, len(mine), em, nll, sum(rag[k] and not mine[k] for k in both),
                            sum(mine[k] and not rag[k] for k in both),
                            (sum(icl[k] and not rag[k] for k in icl_both), sum(rag[k] and not icl[k] for k in icl_both))
                            if icl_both else None))
    return TransferTable(present, out)


def _nll(row: dict | None) -> float:
    value = None if row is None else row.get("answer_nll")
    return float(value) if isinstance(value, (int, float)) else math.nan


def verdict(table: TransferTable | Missing) -> str:
    """From the numbers alone: where regrad is below rag (McNemar p on the questions one of them answers), and
    whether out of template reaches the targets (regrad ≥ shift + 20 points and ≥ half of rag; regrad_icl ≥ rag
    where regrad_icl was evaluated)."""
    if isinstance(table, Missing):
        return f"No transfer verdict: {table.message}"
    below, level, parts = [], [], []
    for r in table:
        if "rag" not in r.em:
            continue
        text = f"{r.group} (EM {r.em['regrad']:.1f} vs {r.em['rag']:.1f}, McNemar p = {r.p_rag:.2g})"
        (below if r.em["regrad"] < r.em["rag"] else level).append(text)
    if below:
        parts.append("regrad is below rag (the same passages in the prompt) on " + "; ".join(below) + ".")
    if level:
        parts.append("regrad matches or passes rag on " + "; ".join(level) + ".")
    for r in table:
        if not r.group.startswith("out of template") or "shift" not in r.em:
            continue
        over = r.em["regrad"] - r.em["shift"]
        half = TARGET_SHARE_OF_RAG * r.em.get("rag", math.nan)
        reached = over >= TARGET_OVER_SHIFT and r.em["regrad"] >= half
        parts.append(f"{r.group[0].upper()}{r.group[1:]}: regrad − shift = {over:+.1f} EM points, half of rag = "
                     f"{half:.1f}: the target (≥ +{TARGET_OVER_SHIFT:.0f} and ≥ half of rag) is "
                     f"{'reached' if reached else 'not reached'}"
                     + (f"; the gold answer's NLL {r.nll_shift.mean:+.2f} ± {r.nll_shift.se:.2f} nats against shift"
                        if r.nll_shift is not None else "") + ".")
        if r.icl_rag is not None:
            icl, rag = r.em["regrad_icl"], r.em["rag"]
            parts.append(f"There regrad_icl (the update and the passages) answers {icl:.1f} against rag's {rag:.1f} "
                         f"(McNemar p = {r.p_icl_rag:.2g}): the target (regrad_icl ≥ rag) is "
                         f"{'reached' if icl >= rag else 'not reached'}.")
    return " ".join(parts) or "No transfer verdict: rag was not evaluated."


# --- echoes: the person's own name, or a piece of the answer ---------------------------------------------------

def echo_kind(prediction: str, entity: str, answers: Sequence[str]) -> str:
    """``"correct"`` (exact match), ``"verbose"`` (the gold answer's words inside a longer answer: a sentence),
    ``"name"`` (every word of the answer is the asked person's name or the start
    of one of its words, e.g. "Ul" for "Ululan Moranford"), ``"fragment"`` (a word that is a proper piece of a gold
    answer's word or starts with its first three letters: the update carried the start of an invented word the
    model cannot spell on, e.g. "Zot" or "Zotarino" for "Zoterua"), ``"empty"`` or ``"other"``."""
    if metrics.score(prediction, list(answers))["em"] == 1.0:
        return "correct"
    words = metrics.normalize_answer(prediction).split()
    if not words:
        return "empty"
    if any(set(metrics.normalize_answer(a).split()) <= set(words) for a in answers if metrics.normalize_answer(a)):
        return "verbose"
    name = metrics.normalize_answer(entity).split()
    if all(any(n.startswith(w) for n in name) for w in words):
        return "name"
    golds = [w for a in answers for w in metrics.normalize_answer(a).split()]
    if any((w in g and w != g) or (len(w) >= FRAGMENT_START and w[:FRAGMENT_START] == g[:FRAGMENT_START])
           for w in words for g in golds):
        return "fragment"
    return "other"


@dataclass
class EchoTable(MarkdownTable):
    rows_: list[tuple[str, str, int, dict]]       # (method, group, n, kind -> count)

    KINDS = ("correct", "verbose", "name", "fragment", "empty", "other")

    def __iter__(self):
        return iter(self.rows_)

    def header(self) -> list[str]:
        return ["method", "questions", "n", "EM %", "answer in a sentence %", "own name %", "answer fragment %",
                "empty %", "other %"]

    def rows(self) -> list[list[str]]:
        return [[m, g, str(n), *(f"{100 * c.get(k, 0) / n:.1f}" for k in self.KINDS)] for m, g, n, c in self.rows_]

    def share(self, method: str, group: str, kind: str) -> float:
        for m, g, n, c in self.rows_:
            if (m, g) == (method, group):
                return c.get(kind, 0) / n
        raise KeyError((method, group))


def echo_table(run: str, datasets: Sequence[str], data_root: str = "data/sample", split: str = "dev",
               evaluation: str | None = None, methods: Sequence[str] = ("regrad", "rag", "no_update")
               ) -> EchoTable | Missing:
    """Per method and question group (probe and transfer split), how each answer misses: the gold answer inside a
    sentence, the asked person's own name, a fragment of the gold answer, empty, other (:func:`echo_kind`)."""
    try:
        groups = question_groups(datasets, data_root, split)
        entities = {(d, str(i)): r["entity"] for d in (PROBE, TRANSFER) if d in datasets
                    for i, r in enumerate(_records(data_root, d, split))}
    except FileNotFoundError as e:
        return Missing(str(e))
    if not groups:
        return Missing(f"neither {PROBE!r} nor {TRANSFER!r} among the evaluated datasets")
    out = []
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: one of {METHODS}")
        counts: dict[str, dict[str, int]] = {}
        for dataset in dict.fromkeys(d for d, _ in groups):
            try:
                rows = rows_by_id(run, dataset, method, "prediction", evaluation)
            except FileNotFoundError:
                continue
            for tid, row in rows.items():
                if (dataset, tid) in groups:
                    kind = echo_kind(row["prediction"], entities[(dataset, tid)], row["answers"])
                    c = counts.setdefault(groups[(dataset, tid)], {})
                    c[kind] = c.get(kind, 0) + 1
        out += [(method, g, sum(c.values()), c) for g, c in counts.items()]
    if not out:
        return Missing(f"no predictions of {list(methods)} on {sorted({d for d, _ in groups})}")
    return EchoTable(out)

