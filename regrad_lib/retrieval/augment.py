"""02_augment: attach the top-k retrieved passages to every question of a dataset split.

Output ``data/augmented/<dataset>/<name>.json`` (``paths.augmented_file``): a JSON list with one record per question,
``{test_id, question, answers, passages, passage_ids, titles, scores}`` plus ``gold_titles`` when the dataset has them
and ``answer_kind`` + ``choices`` for questions answered yes/no or by an option letter; passage ids are strings.
``name`` is ``dev`` for the dev split, ``train_all`` for a whole train split and ``train_<n>`` for its first n questions
(:func:`output_name`). The provenance (dataset, split, slice, index, backend, topk, corpus, git revision, versions) goes
to ``<name>.meta.json`` beside it.

A run appends finished records to ``<name>.json.partial`` (JSON lines after a header line); an interrupted run
continues from the last complete record, and the final file is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from regrad_lib.data import datasets, qa_records
from regrad_lib.io import artifacts, params, paths
from regrad_lib.retrieval.interface import Retriever

__all__ = ["RECORD_KEYS", "augment", "augment_all", "meta_file", "output_name", "partial_file", "read", "recall_figure",
           "recall_table", "title_recall", "Recall"]

log = logging.getLogger(__name__)

RECORD_KEYS = ("test_id", "question", "answers", "passages", "passage_ids", "titles", "scores")


def output_name(split: str, n: int | None = None) -> str:
    """``dev`` for the dev split; ``<split>_all`` for a whole other split, ``<split>_<n>`` for its first n."""
    if split == "dev":
        return "dev"
    return f"{split}_all" if n is None else f"{split}_{n}"


def meta_file(output: Path) -> Path:
    """The provenance sidecar ``<name>.meta.json`` of an augmented file."""
    return output.with_name(output.stem + ".meta.json")


def partial_file(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


@params.typed
def augment(dataset: str, split: str, *, retriever: Retriever, data_dir: str | os.PathLike | None = None,
            topk: int = 3, start: int = 0, end: int | None = None, overwrite: bool = False,
            batch_size: int = 64) -> Path:
    """Retrieve ``topk`` passages for questions ``[start:end]`` of ``split``; return the written file.

    ``data_dir`` defaults to ``data/<dataset>``; ``start``/``end`` index the split as the loader defines it
    (PopQA's ``train`` split already starts at file row 500, so ``start=0`` is the leakage-free default).
    An existing file made by the same request is kept (no work); one made differently needs ``overwrite=True``.
    """
    if topk < 1:
        raise ValueError(f"topk={topk!r}: must be a positive integer (the public setup uses 3)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
    params.integer("start", start, minimum=0)           # a negative start or end would be a Python slice
    if end is not None:
        params.integer("end (the limit of questions)", end, minimum=1)
    paths.augmented_file(dataset, output_name(split))     # dataset and split names checked before any reading
    if retriever.count() == 0:
        raise ValueError(f"the index {retriever.describe().get('index')!r} holds no passages: every question would "
                         "get none; rebuild it from a corpus with passages (01_index)")
    if topk > retriever.count():
        raise ValueError(f"topk={topk} is more than the {retriever.count()} passages of the index "
                         f"{retriever.describe().get('index')!r}: lower topk (the public setup uses 3)")
    folder = paths.resolve(data_dir) if data_dir is not None else paths.data_dir(dataset)
    records = datasets.load(dataset, folder, split, start=start, end=end)
    if not records:
        raise ValueError(f"{dataset}/{split}: questions [{start}:{end}] of {paths.relative(folder)} select none; "
                         "nothing to augment (lower start, or raise end)")
    if end is not None and len(records) < end - start:
        log.warning("%s/%s has only %d questions in [%d:%d]", dataset, split, len(records), start, end)
    output = paths.augmented_file(dataset, output_name(split, None if end is None else len(records)))
    request = {"dataset": dataset, "split": split, "start": start, "end": end, "questions": len(records),
               "data_dir": paths.relative(folder), "topk": topk, **_index_provenance(retriever)}

    if output.exists():
        previous = artifacts.read_json(meta_file(output)).get("config") if meta_file(output).exists() else None
        if previous == request and not overwrite:
            log.info("%s is up to date (%d questions); pass overwrite=True to redo it", paths.relative(output),
                     len(records))
            partial_file(output).unlink(missing_ok=True)   # left by a kill just before its removal
            return output
        # no sidecar but this request's partial file: killed between writing the file and its sidecar
        if not overwrite and not (previous is None and _partial_request(partial_file(output)) == request):
            raise FileExistsError(f"{paths.relative(output)} exists from another request ({previous}), not "
                                  f"{request}: pass overwrite=True to replace it")

    done = _resume(partial_file(output), request)
    if done:
        log.info("Resuming %s after %d questions", paths.relative(output), len(done))
    _run(records, retriever, topk, batch_size, partial_file(output), request, done, f"Augmenting {dataset}/{split}")
    rows = _resume(partial_file(output), request)
    if len(rows) != len(records):
        raise RuntimeError(f"{partial_file(output)} holds {len(rows)} records, expected {len(records)}")
    artifacts.write_json(output, rows, overwrite=True, indent=None)
    artifacts.write_json(meta_file(output), {**artifacts.provenance(request), "count": len(rows)})
    partial_file(output).unlink()
    log.info("Wrote %s (%d questions)", paths.relative(output), len(rows))
    return output


def _index_provenance(retriever: Retriever) -> dict:
    described = retriever.describe()
    return {"index": described.get("index"), "backend": described.get("backend"), "corpus": described.get("corpus")}


def _record(rec: qa_records.QARecord, hits: list) -> dict:
    row = {"test_id": rec.test_id, "question": rec.question, "answers": list(rec.answers),
           "passages": [h.text for h in hits], "passage_ids": [str(h.passage_id) for h in hits],
           "titles": [h.title for h in hits], "scores": [round(float(h.score), 6) for h in hits]}
    if rec.gold_titles:
        row["gold_titles"] = list(rec.gold_titles)
    if rec.kind != "short":                 # short answers keep the records as they were
        row.update(answer_kind=rec.kind, choices=list(rec.choices))
    return row


def _partial_request(partial: Path) -> dict | None:
    """The request in a partial file's header line (None when there is none)."""
    try:
        with partial.open(encoding="utf-8") as f:
            return json.loads(f.readline()).get("request")
    except (OSError, ValueError, AttributeError):
        return None


def _resume(partial: Path, request: dict) -> list[dict]:
    """The complete records of a partial file made by the same request ([] if none); drops a torn last line."""
    if not partial.exists():
        return []
    raw = partial.read_bytes()
    lines = raw.split(b"\n")
    complete, good_bytes = lines[:-1], 0          # the part after the last newline is torn or empty
    try:
        header = json.loads(complete[0]) if complete else None
    except json.JSONDecodeError:
        header = None
    if header != {"request": request}:
        log.warning("Discarding %s: made by another request (%s)", paths.relative(partial), header)
        partial.unlink()
        return []
    rows = []
    good_bytes = len(complete[0]) + 1
    for line in complete[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_bytes += len(line) + 1
    if good_bytes != len(raw):
        with partial.open("r+b") as f:
            f.truncate(good_bytes)
    return rows


def _run(records: list, retriever: Retriever, topk: int, batch_size: int, partial: Path, request: dict,
         done: list[dict], desc: str) -> None:
    from tqdm.auto import tqdm

    with artifacts.naming(partial):         # a full disk names the file
        partial.parent.mkdir(parents=True, exist_ok=True)
        if not done:
            partial.write_text(json.dumps({"request": request}, ensure_ascii=False) + "\n", encoding="utf-8")
    todo = records[len(done):]
    with artifacts.naming(partial), partial.open("a", encoding="utf-8") as f, \
            tqdm(total=len(records), initial=len(done), desc=desc, unit="question") as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            hits = retriever.search([r.question for r in batch], topk)
            f.write("".join(json.dumps(_record(r, h), ensure_ascii=False) + "\n" for r, h in zip(batch, hits)))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))


@params.typed
def augment_all(datasets_: Sequence[str], split: str, *, retriever: Retriever, data_root: str = "data/sample",
                topk: int = 3, limit: int | None = None, limits: dict[str, int | None] | None = None,
                overwrite: bool = False) -> dict[str, Path]:
    """:func:`augment` for several datasets (``<data_root>/<dataset>``), the first ``limit`` questions of each
    (``limits[dataset]`` where given, e.g. more questions for the probe; an entry of a dataset not augmented here
    is named in a warning: a typo would otherwise leave its dataset at ``limit`` unseen)."""
    if isinstance(datasets_, str):
        raise TypeError(f"datasets={datasets_!r}: give a list of dataset names, e.g. [{datasets_!r}]")
    if limit is not None:
        params.integer("limit", limit, minimum=1)
    limits = dict(limits or {})
    for dataset, count in limits.items():
        if count is not None:
            params.integer(f"limits[{dataset!r}]", count, minimum=1)
    unused = sorted(set(limits) - set(datasets_))
    if unused:
        log.warning("limits (limit_per_dataset) name %s, not augmented here (datasets %s): their counts are not used",
                    unused, list(datasets_))
    return {d: augment(d, split, retriever=retriever, data_dir=f"{data_root}/{d}", topk=topk,
                       end=limits.get(d, limit), overwrite=overwrite) for d in datasets_}


def read(dataset: str, name: str) -> list[dict]:
    """An augmented file's records; a missing one names the notebook that writes it."""
    path = paths.augmented_file(dataset, name)
    if not path.is_file():
        raise FileNotFoundError(f"{paths.relative(path)} not found: it is written by 02_augment "
                                f"(dataset={dataset!r}, name={name!r})")
    return artifacts.read_json(path)


# --- retrieval quality ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recall:
    """Share of questions (of ``questions`` with gold) with at least one / all gold items in the top ``k``."""
    dataset: str
    kind: str          # "title" or "passage"
    k: int
    questions: int
    any_hit: float
    all_hit: float


def _recall(dataset: str, kind: str, retrieved: list[list[str]], gold: list[list[str]]) -> Recall | None:
    pairs = [(set(r), set(g)) for r, g in zip(retrieved, gold) if g]
    if not pairs:
        return None
    k = max((len(r) for r in retrieved), default=0)
    return Recall(dataset, kind, k, len(pairs), sum(bool(r & g) for r, g in pairs) / len(pairs),
                  sum(g <= r for r, g in pairs) / len(pairs))


def title_recall(records: list[dict], dataset: str = "") -> Recall | None:
    """Recall of the records' ``gold_titles`` among their retrieved ``titles``; None when there are none."""
    return _recall(dataset, "title", [r["titles"] for r in records], [r.get("gold_titles", []) for r in records])


def passage_recall(records: list[dict], gold_file: str | os.PathLike, dataset: str = "") -> Recall | None:
    """Recall of gold passage ids (a sample ``gold_passages*.json``, entry i = question test_id i)."""
    gold = artifacts.read_json(paths.resolve(gold_file))
    ids = [[str(x) for x in gold[r["test_id"]]["gold_ids"]] if r["test_id"] < len(gold) else [] for r in records]
    return _recall(dataset, "passage", [r["passage_ids"] for r in records], ids)


def recall_table(files: dict[str, Path], data_root: str | None = None) -> list[dict]:
    """One row per (dataset, recall kind) that can be measured: gold titles, and gold passage ids when
    ``<data_root>/<dataset>/gold_passages[_<split>].json`` exists (the bundled sample has them)."""
    rows = []
    for dataset, path in files.items():
        records = artifacts.read_json(path)
        split = artifacts.read_json(meta_file(path))["config"]["split"] if meta_file(path).exists() else "dev"
        found = [title_recall(records, dataset)]
        if data_root is not None:
            folder = paths.resolve(data_root) / dataset
            for name in (f"gold_passages_{split}.json", "gold_passages.json"):
                if (folder / name).is_file():
                    found.append(passage_recall(records, folder / name, dataset))
                    break
        rows += [asdict(r) for r in found if r is not None]
    return rows


def recall_figure(rows: list[dict]):
    """A bar chart of ``recall_table`` rows: share of questions with a gold item in the top k."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 1), 3))
    plt.close(fig)   # closed: a notebook shows the returned figure once, not twice
    labels = [f"{r['dataset']}\n({r['kind']})" for r in rows]
    ax.bar(labels, [r["any_hit"] for r in rows], label="any gold in top k")
    ax.bar(labels, [r["all_hit"] for r in rows], width=0.4, label="all gold in top k")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of questions")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig
