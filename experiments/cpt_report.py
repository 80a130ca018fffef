"""Print the drift study of a run as markdown: the report of ``python -m experiments.cpt_study report`` (every
method's scores, CPT's drift chunk by chunk beside ReGrad's point, the frontier and its verdict at equal drift, the
paired comparisons and the general-ability changes) without writing its files. Reads only files 05_evaluate wrote
(no model); the arms are those of ``reference/experiments/cpt_grid/chosen.json``.

    .venv/bin/python -m experiments.cpt_report --run demo --datasets probe,popqa
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="demo")
    p.add_argument("--datasets", default="probe,popqa")
    a = p.parse_args()
    from experiments import cpt_study

    datasets = a.datasets.split(",")
    print(cpt_study.markdown(a.run, datasets, cpt_study.arms(cpt_study.chosen_settings(), datasets))[0])


if __name__ == "__main__":
    main()
