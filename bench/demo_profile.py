"""Where a pipeline run spent its time: per notebook and per cell, from papermill's records in the executed copies.

    .venv/bin/python -m bench.demo_profile --run demo [--top 12]

Reads ``runs/<run>/0*.ipynb`` (written by ``python -m regrad_lib.runner.pipeline``; ``make demo`` writes ``runs/demo``)
and prints one JSON line per notebook (seconds, share of the total) and the slowest cells with their first line.
"""

from __future__ import annotations

import argparse
import json

from regrad_lib.io import paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo")
    parser.add_argument("--top", type=int, default=12, help="how many of the slowest cells to list")
    args = parser.parse_args()
    folder = paths.executed_notebooks_dir(args.run)
    books = sorted(folder.glob("0*.ipynb"))
    if not books:
        raise SystemExit(f"no executed notebooks in {paths.relative(folder)}: run the pipeline first")
    cells, total = [], 0.0
    for book in books:
        nb = json.loads(book.read_text(encoding="utf-8"))
        seconds = float(nb["metadata"].get("papermill", {}).get("duration") or 0.0)
        total += seconds
        for c in nb["cells"]:
            spent = c.get("metadata", {}).get("papermill", {}).get("duration")
            if c["cell_type"] == "code" and spent:
                first = next((line for line in "".join(c["source"]).splitlines() if not line.startswith("#")), "")
                cells.append((float(spent), book.stem, first[:90]))
        print(json.dumps({"notebook": book.stem, "seconds": round(seconds, 1)}))
    print(json.dumps({"total_seconds": round(total, 1), "minutes": round(total / 60, 2)}))
    for spent, book, first in sorted(cells, reverse=True)[:args.top]:
        print(json.dumps({"cell_seconds": round(spent, 1), "share": round(spent / total, 3), "notebook": book,
                          "cell": first}))


if __name__ == "__main__":
    main()
