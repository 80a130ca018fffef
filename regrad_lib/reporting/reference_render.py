"""README's demo tables, rendered from a reference folder (:mod:`regrad_lib.reporting.reference`) between marker
comments:

    <!-- reference:probe -->  ...  <!-- /reference:probe -->

``python -m regrad_lib.reporting.reference render`` rewrites every marked block; ``check`` (and the test suite) fails
when a block differs from its rendering, so no figure of these tables is typed by hand. Blocks: ``probe`` (the probe's
methods, paired effects, EM per relation, gamma sweep), ``datasets`` (every dataset's paired effects and EM, then
06_analyze's verdict), ``seeds`` (mean ± SD across seeds and each seed's effect), ``source`` (what the reference is).
Methods, datasets and pairs are whatever the reference holds.
"""

from __future__ import annotations

import math
import re

from regrad_lib.answering.specs import METHODS, ordered
from regrad_lib.io import paths
from regrad_lib.reporting import effects
from regrad_lib.reporting.reference_tables import EXPERIMENTS, META, PROBE, Results, load

BLOCK = re.compile(r"(<!-- reference:(?P<name>[a-z]+) -->\n)(?P<body>.*?)(<!-- /reference:(?P=name) -->)", re.S)
DESCRIPTIONS = {"rag": "rag (passages in the prompt)", "shift": "shift (another question's gradients)",
                "no_update": "no_update (meta-trained LoRA, γ = 0)", "closed_book": "closed_book (question only)",
                "regrad_online": "regrad_online (gradients computed on the fly)",
                "regrad_icl": "regrad_icl (gradients and passages in the prompt)",
                "sft": "sft (LoRA fine-tuned on the training questions, question only)",
                "rag_sft": "rag_sft (LoRA fine-tuned on the training questions with their passages)"}
MAIN = "regrad"


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", "−")


def _methods(results: Results, seed: str, dataset: str | None = None) -> list[str]:
    rows = results.table("summary", seed, **({"dataset": dataset} if dataset else {}))
    return ordered((r["method"] for r in rows), METHODS)


def _summary(results: Results, seed: str, dataset: str, method: str) -> dict | None:
    rows = results.table("summary", seed, dataset=dataset, method=method)
    return rows[0] if rows else None


def _effect(row: dict) -> effects.Effect:
    """A stored effects row as 06_analyze's :class:`effects.Effect` (for its verdict)."""
    nll = effects.PairedDifference(row["dataset"], row["a"], row["b"], row["mean"], row["se"],
                                   row["n_lower"] / row["n"], row["n_lower"], row["n"])
    em = effects.PairedEM(row["dataset"], row["a"], row["b"], row["em_a"], row["em_b"], row["only_a"], row["only_b"],
                          row["n"])
    acc = None
    if row.get("acc_a") not in (None, ""):       # saved before answer accuracy existed: none
        acc = effects.PairedEM(row["dataset"], row["a"], row["b"], row["acc_a"], row["acc_b"], row["acc_only_a"],
                               row["acc_only_b"], row["n"], "acc")
    return effects.Effect(nll, em, acc)


def _effect_sentence(row: dict) -> str:
    e = _effect(row)
    acc = "" if e.acc is None else (f"accuracy {_signed(e.acc.difference, 1)} ({e.acc.only_a} questions only "
                                    f"{e.nll.method_a} answers, {e.acc.only_b} only {e.nll.method_b}; exact McNemar "
                                    f"p = {effects.format_p(e.acc.p)}), ")
    return (f"{e.nll.label}: {acc}answer NLL {_signed(e.nll.mean)} ± {e.nll.se:.2f} nats (lower on "
            f"{e.nll.n_lower}/{e.nll.n}), EM {_signed(e.em.difference, 1)} (McNemar p = {effects.format_p(e.em.p)})")


def _score(s: dict, key: str) -> str:
    value = s.get(key)
    return "–" if value in (None, "") or not math.isfinite(float(value)) else f"{float(value):.1f}"


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def probe_block(results: Results) -> str:
    seed = results.main_seed
    if not results.table("summary", seed, dataset=PROBE):
        return "The reference holds no probe results."
    rows = []
    for method in _methods(results, seed, PROBE):
        s = _summary(results, seed, PROBE, method)
        cells = [DESCRIPTIONS.get(method, method), _score(s, "acc"), f"{s['em']:.1f}", f"{s['nll']:.2f}"]
        rows.append([f"**{c}**" for c in cells] if method == MAIN else cells)
    n = _summary(results, seed, PROBE, _methods(results, seed, PROBE)[0])["n"]
    parts = [f"Probe, {n} questions (seed {seed}; acc: a gold answer contained in the answer):", "",
             _table(["method", "acc", "EM", "answer NLL"], rows)]
    sentences = [_effect_sentence(r) for r in results.table("effects", seed, dataset=PROBE)]
    if sentences:
        parts += ["", "; ".join(sentences) + "."]
    relations = results.table("relations", seed)
    if relations:
        groups = list(dict.fromkeys(r["relation"] for r in relations))
        methods = ordered((r["method"] for r in relations), METHODS)
        cell = {(r["relation"], r["method"]): r for r in relations}
        parts += ["", "EM per relation (a relation marked *held out* is never asked in meta-training):", "",
                  _table(["relation", "n", *methods],
                         [[g, str(cell[(g, methods[0])]["n"]) if (g, methods[0]) in cell else "–",
                           *(f"{cell[(g, m)]['em']:.1f}" if (g, m) in cell else "–" for m in methods)]
                          for g in groups])]
    sweep = sorted(results.table("sweeps", seed, dataset=PROBE), key=lambda r: (r["method"], r["topk"], r["gamma"]))
    if sweep:
        parts += ["", f"γ sweep ({sweep[0]['method']}, top-{sweep[0]['topk']}):", "",
                  _table(["γ", *(f"{r['gamma']:g}" for r in sweep)],
                         [["EM", *(f"{r['em']:.1f}" for r in sweep)],
                          ["answer NLL", *(f"{r['nll']:.2f}" for r in sweep)]])]
    return "\n".join(parts)


def _effect_cell(row: dict | None) -> str:
    if row is None:
        return "–"
    e = _effect(row)
    text = f"{_signed(e.nll.mean)} ± {e.nll.se:.2f} ({e.nll.n_lower}/{e.nll.n})"
    clear = e.nll.mean < 0 and abs(e.nll.z) > effects.CLEAR_SE
    acc = "" if e.acc is None else f"; acc {_signed(e.acc.difference, 1)}, p = {effects.format_p(e.acc.p)}"
    em = f"; EM {_signed(e.em.difference, 1)}, p = {effects.format_p(e.em.p)}"
    return (f"**{text}**" if clear else text) + acc + em


def datasets_block(results: Results) -> str:
    seed = results.main_seed
    datasets = list(dict.fromkeys(r["dataset"] for r in results.table("summary", seed)))
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in results.table("effects", seed)))
    methods = _methods(results, seed)
    rows = []
    for d in datasets:
        first = _summary(results, seed, d, _methods(results, seed, d)[0])
        found = {(r["a"], r["b"]): r for r in results.table("effects", seed, dataset=d)}
        rows.append([d, str(first["n"]), *(_effect_cell(found.get(p)) for p in pairs),
                     *(f"{_score(s, 'acc')} / {s['em']:.1f}" if (s := _summary(results, seed, d, m)) else "–"
                       for m in methods)])
    header = ["dataset", "n", *(f"{a} − {b}: answer NLL (lower on); acc, McNemar p; EM, McNemar p" for a, b in pairs),
              *(f"{m} acc / EM" for m in methods)]
    table = effects.EffectTable([_effect(r) for r in results.table("effects", seed)])
    verdicts = [effects.verdict(table, b, a) for a, b in pairs]
    return "\n".join([f"Every dataset (seed {seed}; answer NLL differences in nats, mean ± SE; bold: beyond "
                      f"{effects.CLEAR_SE:g} SE; acc: a gold answer contained in the answer):", "",
                      _table(header, rows, numeric_from=2), "",
                      "06_analyze's verdicts, written from these numbers:", "",
                      *[f"- {v}" for v in verdicts]])


FAIR_FOLDER = "reference/fair"
FAIR_METHODS = ("closed_book", "rag", "sft", "rag_sft", "regrad", "regrad_icl")


def _grid(selected: dict) -> str:
    rows = ", ".join(f"{g['learning_rate']:g}: {g['validation']['eval_loss']:.3f}" for g in selected["grid"]
                     if g.get("validation"))
    return f"{selected['method']} {selected['learning_rate']:g} (validation answer loss per rate: {rows})"


def fair_block(results: Results) -> str:
    """The comparison in which every baseline that can be trained got what meta-training got (``make
    experiments-fair``): acc / EM / answer NLL of each method per dataset, the paired effects of regrad and regrad_icl
    against rag_sft, sft and rag, and one verdict per pair."""
    seed = results.main_seed
    datasets = list(dict.fromkeys(r["dataset"] for r in results.table("summary", seed)))
    methods = [m for m in FAIR_METHODS if results.table("summary", seed, method=m)]
    rows = []
    for d in datasets:
        cells = [d, str(results.table("summary", seed, dataset=d)[0]["n"])]
        for m in methods:
            s = _summary(results, seed, d, m)
            cells.append("–" if s is None else f"{_score(s, 'acc')} / {s['em']:.1f} / {s['nll']:.2f}")
        rows.append(cells)
    pairs = [p for p in effects.FAIR_PAIRS if results.table("effects", seed, a=p[0], b=p[1])]
    paired = []
    for d in datasets:
        found = {(r["a"], r["b"]): r for r in results.table("effects", seed, dataset=d)}
        paired.append([d, *(_effect_cell(found.get(p)) for p in pairs)])
    table = effects.EffectTable([_effect(r) for r in results.table("effects", seed) if (r["a"], r["b"]) in pairs])
    chosen = results.meta.get("baselines", {})
    parts = [f"Every dataset, seed {seed}: answer accuracy (a gold answer contained) / EM / answer NLL (nats) of each "
             "method; sft and rag_sft were fine-tuned on the very training questions, answer frame and label, "
             "and number of examples meta-training used:", "",
             _table(["dataset", "n", *methods], rows, numeric_from=2)]
    if chosen:
        parts += ["", "Learning rates chosen on the run's validation slice: " +
                  "; ".join(_grid(chosen[m]) for m in ("sft", "rag_sft") if m in chosen) + "."]
    parts += ["", "Paired by question (answer NLL mean ± SE, lower on; acc and EM differences in points with exact "
              f"McNemar p; bold: NLL lower beyond {effects.CLEAR_SE:g} SE):", "",
              _table(["dataset", *(f"{a} − {b}" for a, b in pairs)], paired), "",
              "06_analyze's verdicts, written from these numbers:", "",
              *[f"- {effects.verdict(table, b, a)}" for a, b in pairs]]
    return "\n".join(parts)


def seeds_block(results: Results) -> str:
    seeds = results.seeds
    if len(seeds) < 2:
        return ("The reference holds one seed; `python -m regrad_lib.reporting.reference save --run <run> --seed-runs "
                "<runs of other seeds>` adds others.")
    datasets = list(dict.fromkeys(r["dataset"] for r in results.summary))
    pairs = list(dict.fromkeys((r["a"], r["b"]) for r in results.effects))
    methods = [m for m in ordered((r["method"] for r in results.summary), METHODS) if any(m in p for p in pairs)]
    rows, notes = [], []
    for d in datasets:
        cells = [d]
        for m in methods:
            values = [s["em"] for seed in seeds if (s := _summary(results, seed, d, m))]
            cells.append(_spread(values))
        for a, b in pairs:
            found = [r for seed in seeds for r in results.table("effects", seed, dataset=d, a=a, b=b)]
            cells.append(_spread([r["mean"] for r in found], signed=True))
            if (a, b) == pairs[0]:
                cells.append(", ".join(f"{_signed(r['mean'])} ± {r['se']:.2f}" for r in found))
                clear = [r["seed"] for r in found if r["mean"] < 0 and abs(_effect(r).nll.z) > effects.CLEAR_SE]
                significant = [r["seed"] for r in found if r["em_a"] > r["em_b"] and _effect(r).em.p < effects.ALPHA]
                notes.append(f"{d}: {a} − {b} answer NLL lower in {sum(r['mean'] < 0 for r in found)} of "
                             f"{len(found)} seeds, beyond {effects.CLEAR_SE:g} SE in {len(clear)}"
                             f"{' (' + ', '.join(clear) + ')' if 0 < len(clear) < len(found) else ''}; EM higher "
                             f"with McNemar p < {effects.ALPHA:g} in {len(significant)}")
        rows.append(cells)
    a, b = pairs[0]
    header = ["dataset", *(f"{m} EM" for m in methods), *(f"{x} − {y} answer NLL" for x, y in pairs)]
    header.insert(1 + len(methods) + 1, f"{a} − {b} per seed (mean ± SE)")
    return "\n".join([f"Seeds {', '.join(seeds)}, mean ± SD over seeds:", "", _table(header, rows), "",
                      "; ".join(notes) + "."])


def _spread(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    s = effects.Spread("", tuple(values))
    sd = "–" if math.isnan(s.sd) else f"{s.sd:.2f}" if signed else f"{s.sd:.1f}"
    return f"{_signed(s.mean)} ± {sd}" if signed else f"{s.mean:.1f} ± {sd}"


def source_block(results: Results, folder: str) -> str:
    meta = results.meta
    runs = ", ".join(f"`{run}` (seed {seed})" for seed, run in meta.get("runs", {}).items())
    where = meta.get("machine", {})
    trained = sorted({str(v)[:7] for v in (meta.get("trained_at") or {}).values() if v})
    return (f"Rendered from `{folder}/` by `python -m regrad_lib.reporting.reference render`: runs {runs}"
            f"{' trained at commit ' + ', '.join(trained) if trained else ''}, saved "
            f"{meta.get('created', '?')} at commit {str(meta.get('git_revision') or '?')[:7]} on "
            f"{where.get('cpu', '?')} "
            f"({where.get('cores', '?')} cores, {_bf16(where.get('native_bf16'))}, torch {where.get('torch', '?')}) "
            f"with `{meta.get('command') or '?'}`.")


def _bf16(native) -> str:
    return {True: "native bf16: gradient work in bf16", False: "no native bf16: gradient work in fp32"}.get(
        native, "bf16 support not recorded")




def experiment_block(name: str, target: str | None = None) -> str:
    """The committed report ``reference/experiments/<name>.md`` (written by ``make <target>``, by default
    ``experiments-<name>``)."""
    target = target or f"experiments-{name}"
    file = paths.resolve(f"{EXPERIMENTS}/{name}.md")
    if not file.is_file():
        raise FileNotFoundError(f"{EXPERIMENTS}/{name}.md not found: it is written by `make {target}`")
    return f"From `{EXPERIMENTS}/{name}.md` (`make {target}`):\n\n" + file.read_text(encoding="utf-8").strip()


def _from_folder(folder: str, render, target: str) -> str:
    """A block rendered from another saved reference (``make <target>`` writes it)."""
    if not (paths.resolve(folder) / META).is_file():
        raise FileNotFoundError(f"{folder}/{META} not found: it is written by `make {target}`")
    return f"From `{folder}/` (`make {target}`):\n\n" + render(load(folder))


SWEEPS = f"{EXPERIMENTS}/sweeps.csv"      # `make experiments-sweeps`: the demo run's top-k and mixed-documents sweeps
DEMO_PRESET = "smollm2-135m-instruct"     # the run those sweeps are of (its training top-k is marked "trained")
_COUNTS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _em_nll(row: dict) -> str:
    return f"{row['em']:.1f} / {row['nll']:.3f}"


def _gammas(rows: list[dict]) -> str:
    return ", ".join(f"{g:g}" for g in sorted({float(r["gamma"]) for r in rows}))


def _replaced(topk: int, share: float) -> str:
    """How many of a question's ``topk`` passages the share replaces (method.md: ⌊k·p⌋), in words."""
    m = math.floor(topk * share + 1e-9)
    return f"all {_COUNTS.get(m, m)}" if m == topk else "one passage" if m == 1 else str(_COUNTS.get(m, m))


def sweeps_block(rows: list[dict] | None = None) -> str:
    """BENCHMARKS' top-k and mixed-documents tables, from ``reference/experiments/sweeps.csv`` (or ``rows``): EM ×100
    / mean answer NLL of each dataset at every k (no mixing) and at every share p (at the mixed sweep's k)."""
    if rows is None:
        from regrad_lib.reporting.reference_tables import read_table

        file = paths.resolve(SWEEPS)
        if not file.is_file():
            raise FileNotFoundError(f"{SWEEPS} not found: it is written by `make experiments-sweeps`")
        rows = read_table(file)
    from regrad_lib import config

    trained = config.load_preset(DEMO_PRESET).train.topk
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    plain = [r for r in rows if not float(r.get("mixed") or 0.0)]
    mixed = [r for r in rows if float(r.get("mixed") or 0.0)]
    mixed_k = sorted({int(r["topk"]) for r in mixed})
    if len(mixed_k) > 1:
        raise ValueError(f"{SWEEPS}: the mixed-documents sweep holds several k ({mixed_k}); its table shows one")
    ks = sorted({int(r["topk"]) for r in plain})
    cell = {(r["dataset"], int(r["topk"]), float(r.get("mixed") or 0.0)): r for r in rows}

    def size(d: str) -> int | None:
        n = {int(r["n"]) for r in rows if r["dataset"] == d}
        return n.pop() if len(n) == 1 else None

    def name(d: str) -> str:
        return f"{d} ({size(d)})" if size(d) else d

    # a share's binomial SE is largest at one half: 100 · √(0.25 / n) points
    se = ", ".join(f"{100 * math.sqrt(0.25 / size(d)):.1f} points on {d}" for d in datasets if size(d))
    parts = [f"**Top-k** (γ = {_gammas(plain)}, dev; EM ×100 / mean answer NLL in nats; EM's binomial SE at most "
             f"{se}):", "",
             _table(["dataset", *(f"k = {k}" + (" (trained)" if k == trained else "") for k in ks)],
                    [[name(d), *(_em_nll(cell[(d, k, 0.0)]) if (d, k, 0.0) in cell else "–" for k in ks)]
                     for d in datasets], numeric_from=len(ks) + 1)]
    if mixed:
        k = mixed_k[0]
        shares = sorted({0.0, *(float(r["mixed"]) for r in mixed)})
        parts += ["", f"**Mixed documents** (k = {k}, γ = {_gammas(mixed)}, dev; p: share of each question's top {k} "
                  "replaced by the next question's best):", "",
                  _table(["dataset", *("p = 0" if p == 0 else f"{p:g} ({_replaced(k, p)})" for p in shares)],
                         [[name(d), *(_em_nll(cell[(d, k, p)]) if (d, k, p) in cell else "–" for p in shares)]
                          for d in datasets], numeric_from=len(shares) + 1)]
    return "\n".join(parts)


def block(name: str, results: Results, folder: str) -> str:
    makers = {"probe": probe_block, "datasets": datasets_block, "seeds": seeds_block,
              "sweeps": lambda r: sweeps_block(),
              "source": lambda r: source_block(r, folder), "cpt": lambda r: experiment_block("cpt"),
              "cptgrid": lambda r: experiment_block("cpt_grid", "experiments-cpt-grid"),
              "pubmedqa": lambda r: experiment_block("pubmedqa"), "transfer": lambda r: experiment_block("transfer"),
              "transferfrontier": lambda r: experiment_block("transfer_frontier", "experiments-transfer-frontier"),
              "transferlong": lambda r: experiment_block("transfer_long", "experiments-transfer-long"),
              "binding": lambda r: experiment_block("binding"),
              "fair": lambda r: _from_folder(FAIR_FOLDER, fair_block, "experiments-fair"),
              "learningcurve": lambda r: experiment_block("learning_curve", "experiments-curve"),
              "bindingtraining": lambda r: experiment_block("binding_training", "experiments-binding-training")}
    if name not in makers:
        raise ValueError(f"unknown reference block {name!r}; blocks are {sorted(makers)}")
    return makers[name](results)


def render_blocks(text: str, results: Results, folder: str) -> str:
    """``text`` with every marked block's body replaced by its rendering."""
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("name"), results, folder) + "\n" + m.group(4), text)


def stale_blocks(text: str, rendered: str) -> list[str]:
    """Names of the blocks whose body differs between ``text`` and ``rendered``."""
    old = {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
    new = {m.group("name"): m.group("body") for m in BLOCK.finditer(rendered)}
    return [name for name in old if old[name] != new.get(name)]
