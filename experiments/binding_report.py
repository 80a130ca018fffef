"""Print the binding probe and regrad_icl's controls of a run as markdown (the report `make experiments-binding`
commits): whose value each method answers on ``probe_binding``, the paired effects regrad − shift there, and
regrad_icl against rag, no_update_icl and shift_icl with their verdicts. Reads only 05_evaluate's files.

    .venv/bin/python -m experiments.binding_report --run demo --datasets popqa,probe,probe_binding
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo")
    p.add_argument("--evaluation", default=None)
    p.add_argument("--datasets", default="popqa,probe,probe_binding")
    p.add_argument("--data-root", default="data/sample")
    a = p.parse_args()
    from regrad_lib.io.run_state import trained_revision

    revision = trained_revision(a.run)
    print(f"Run `{a.run}`, trained at commit {revision[:7] if revision else '(not recorded)'}.\n")

    from regrad_lib.reporting import binding_report, effects

    datasets = a.datasets.split(",")
    print("Whose value the answer carries on the binding probe (each question's top-3 = the asked person and two "
          "family members with the same relation, other values):\n")
    print(binding_report.shares(a.run, datasets, a.data_root, "dev", a.evaluation))
    table = effects.effect_table(a.run, [d for d in datasets if d == "probe_binding"], evaluation=a.evaluation)
    print("\nregrad against shift and no_update on the binding probe:\n")
    print(table)
    print("\n" + effects.verdict(table))
    combined = effects.effect_table(a.run, datasets, effects.ICL_PAIRS, a.evaluation)
    print("\nregrad_icl (gradients and passages in the prompt) against rag and its two controls:\n")
    print(combined)
    print("\n" + effects.verdicts(combined, effects.ICL_PAIRS))


if __name__ == "__main__":
    main()
