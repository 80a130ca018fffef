"""Print the drift study of a run as markdown (the numbers README.md quotes): every method's EM and answer NLL,
CPT's drift chunk by chunk beside ReGrad's point, the paired comparisons, the paired general-ability changes and the
verdict. Reads only files 05_evaluate wrote (no model).

    .venv/bin/python -m experiments.cpt_report --run demo --evaluation cpt --datasets probe
"""

from __future__ import annotations

import argparse

from regrad_lib.reporting import analysis

METHODS = ("closed_book", "rag", "regrad", "regrad_icl", "cpt", "cpt_rag", "shift", "no_update")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo")
    p.add_argument("--evaluation", default=None)
    p.add_argument("--datasets", default="probe")
    a = p.parse_args()
    from regrad_lib.io.run_state import trained_revision

    revision = trained_revision(a.run)
    print(f"Run `{a.run}`, trained at commit {revision[:7] if revision else '(not recorded)'}.\n")

    from regrad_lib.io import paths, result_files
    from regrad_lib.reporting import drift_report

    datasets = a.datasets.split(",")
    for dataset in datasets:     # the CPT settings each stream was trained with (drift.json)
        if paths.drift_file(a.run, dataset, a.evaluation).is_file():
            print(f"- CPT on {dataset}: {result_files.read_drift(a.run, dataset, a.evaluation)['settings']['cpt']}")
    print()
    rows = analysis.read_summary(a.run, datasets, a.evaluation)
    print("| dataset | method | EM | answer NLL | n |\n|---|---|---:|---:|---:|")
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (r.dataset, order.get(r.method, 99))):
        print(f"| {r.dataset} | {r.method} | {r.em:.1f} | {r.nll:.2f} | {r.n} |")
    table = drift_report.drift_table(a.run, datasets, a.evaluation)
    print()
    print(table.to_markdown() if hasattr(table, "to_markdown") else table)
    paired = drift_report.paired(a.run, datasets, a.evaluation)
    print()
    print(paired.to_markdown() if hasattr(paired, "to_markdown") else paired)
    changes = drift_report.general_changes(table)
    print()
    for c in [] if isinstance(changes, analysis.Missing) else changes:
        print(f"- {drift_report.describe_change(c)}")
    print()
    print(drift_report.verdict(paired, table, changes))


if __name__ == "__main__":
    main()
