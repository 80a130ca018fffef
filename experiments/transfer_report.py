"""How far a run's update transfers, as markdown: in template beside out of template with rag beside regrad, the
verdict, how the answers miss (own name, fragments), and the paired effects on the transfer split.

    REGRAD_WORK=... .venv/bin/python -m experiments.transfer_report --run demo [--evaluation NAME]

Reads the run's results of the probe and of its transfer split (05_evaluate; `make experiments-transfer`).
"""

from __future__ import annotations

import argparse

from regrad_lib.io import result_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data-root", default="data/sample")
    p.add_argument("--evaluation", default=None)
    a = p.parse_args()

    from regrad_lib.evaluation import results
    from regrad_lib.io import paths
    from regrad_lib.reporting import effects, transfer_report

    datasets = ["probe", "probe_transfer"]
    table = transfer_report.transfer_table(a.run, datasets, a.data_root, evaluation=a.evaluation)
    print(f"**How far the update transfers (run {a.run})**\n")
    for d in datasets:       # which code answered (git revision recorded in each result file)
        file = results.method_files(a.run, d, "regrad", a.evaluation)[1]
        if file.is_file():
            rev = result_files.read_metrics(file).get("provenance", {}).get("git_revision", "?")
            print(f"{d}: regrad answered at commit {rev[:7]}{' (dirty)' if rev.endswith('-dirty') else ''}"
                  f" ({paths.relative(file)})  ")
    print()
    print(table, "\n")
    print(transfer_report.verdict(table), "\n")
    print("**How the answers miss**\n")
    print(transfer_report.echo_table(a.run, datasets, a.data_root, evaluation=a.evaluation,
                              methods=("regrad", "rag", "shift", "no_update")), "\n")
    print("**Paired effects on the transfer split (all its questions)**\n")
    print(effects.effect_table(a.run, ["probe_transfer"], evaluation=a.evaluation,
                               pairs=(*effects.PAIRS, ("regrad", "rag"), ("regrad_icl", "rag"))))


if __name__ == "__main__":
    main()
