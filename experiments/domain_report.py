"""A label dataset's evaluation beside its majority-class baseline: accuracy and answer NLL per method, which labels
each method answers, the paired effects of regrad, and how often retrieval finds the question's own abstract.

    REGRAD_WORK=... .venv/bin/python -m experiments.domain_report --run pubmedqa --dataset pubmedqa \\
        --data-root ../shared/data/domains [--evaluation NAME]

Reads the run's results (05_evaluate), the augmented dev file (02_augment) and the dataset's training split (the
majority label is chosen on training answers, never on the test questions).
"""

from __future__ import annotations

import argparse
from collections import Counter

from regrad_lib.io import result_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--dataset", default="pubmedqa")
    p.add_argument("--data-root", default="data/sample")
    p.add_argument("--evaluation", default=None)
    a = p.parse_args()

    from regrad_lib.io.run_state import trained_revision

    revision = trained_revision(a.run)
    print(f"Run `{a.run}`, trained at commit {revision[:7] if revision else '(not recorded)'}.\n")

    from regrad_lib.data import datasets, metrics, pubmedqa
    from regrad_lib.io import paths
    from regrad_lib.reporting import analysis, effects
    from regrad_lib.retrieval import augment

    folder = paths.resolve(a.data_root) / a.dataset
    train = datasets.load(a.dataset, folder, "train")
    rows = analysis.read_summary(a.run, [a.dataset], a.evaluation)
    methods = [r.method for r in rows]
    golds = [r["answers"][0] for r in result_files.method_predictions(a.run, a.dataset, methods[0], a.evaluation)]
    base = metrics.majority_baseline([r.answers[0] for r in train], golds)
    print(f"{a.dataset}: n = {base['n']} test questions, labels {base['test_counts']}; majority label of the "
          f"{len(train)} training questions: {base['label']!r}, accuracy {base['accuracy']:.1f}")
    print("\n| method | accuracy | answer NLL | answers given |\n|---|---:|---:|---|")
    for r in rows:
        said = Counter(x["prediction"] or "(none)" for x in result_files.method_predictions(a.run, a.dataset, r.method,
                                                                                      a.evaluation))
        print(f"| {r.method} | {r.em:.1f} | {r.nll:.3f} | {dict(said.most_common())} |")
    print(f"| majority class ({base['label']}) | {base['accuracy']:.1f} | | |")
    table = effects.effect_table(a.run, [a.dataset], evaluation=a.evaluation)
    print()
    print(table)
    print(effects.verdict(table))
    if a.dataset == "pubmedqa" and (folder / pubmedqa.ORIGINAL).is_file():
        share = pubmedqa.own_passage_share(augment.read(a.dataset, "dev"), folder)
        print(f"\nretrieved passages that are the question's own abstract's paragraphs: {100 * share:.1f} %")


if __name__ == "__main__":
    main()
