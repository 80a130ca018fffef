"""BM25 retrieval behind one interface: an embedded tantivy index (default) or an Elasticsearch server.

``build(corpus_path, name, backend)`` indexes a DPR-style corpus (``corpus.read``) and ``open(name, backend)``
reopens it; both return a :class:`Retriever` whose ``search(queries, k)`` answers a batch of questions with
``Hit(passage_id, title, text, score)`` lists. Index names map to ``indexes/<name>/`` (``paths.index_dir``) for
the embedded backend and to the Elasticsearch index of that name.

Both backends score like the public setup (method.md "Data"): English analysis (stemming, stop words) of title
and text, a ``best_fields`` query over the two fields (the best field's BM25 plus 0.5 x the other's), the query
cut to its first 256 whitespace tokens. The embedded backend builds its query from analysed terms, never from
query syntax, so quotes, colons or parentheses in a question are plain text.

Modules: the shared types (interface), the embedded backend (tantivy), the server backend (elastic) and
02_augment, which retrieves every question's passages (augment).
"""

from __future__ import annotations

import difflib
import os

from regrad_lib.io import params, paths
from regrad_lib.retrieval.interface import BACKENDS, Hit, Retriever

__all__ = ["build", "open", "search_one"]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        near = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f" Did you mean: {near[0]}?" if near else ""
        raise ValueError(f"Unknown retrieval backend {backend!r}; allowed: {', '.join(BACKENDS)}.{hint}")


def build(corpus_path: str | os.PathLike, name: str, backend: str = "tantivy", **options) -> Retriever:
    """Index ``corpus_path`` (DPR TSV or JSONL, repo-relative or absolute) as ``name``; resumes a partial build.

    A complete index of the same corpus is reopened as is; pass ``rebuild=True`` to start over. Options:
    :class:`regrad_lib.retrieval.tantivy.TantivyOptions` fields for ``"tantivy"``,
    :class:`regrad_lib.retrieval.elastic.EsOptions` fields for ``"elasticsearch"``.
    """
    _check_backend(backend)
    corpus_path = paths.resolve(corpus_path)
    if not corpus_path.is_file():
        raise FileNotFoundError(f"Corpus {corpus_path} not found: give a DPR psgs_w100.tsv or a JSONL corpus "
                                f"(the bundled sample is {paths.relative(paths.sample_corpus())})")
    if backend == "elasticsearch":
        from regrad_lib.retrieval import elastic
        return elastic.build(corpus_path, name, **options)
    from regrad_lib.retrieval.tantivy import TantivyOptions, TantivyRetriever
    return TantivyRetriever.build(corpus_path, name, TantivyOptions.from_dict(options))


def open(name: str, backend: str = "tantivy", **options) -> Retriever:  # noqa: A001 - the public name
    """Open the finished index ``name``; an incomplete or corrupted one is refused with the fix."""
    _check_backend(backend)
    if backend == "elasticsearch":
        from regrad_lib.retrieval import elastic
        return elastic.open(name, **options)
    from regrad_lib.retrieval.tantivy import TantivyOptions, TantivyRetriever
    return TantivyRetriever.open(name, TantivyOptions.from_dict(options))


def search_one(retriever: Retriever, query: str, k: int = 3) -> list[Hit]:
    """The top ``k`` passages of one typed question (01_index's sample query); a query that finds none (empty, or
    stop words only) is refused naming it."""
    query = params.text("query", query)
    [hits] = retriever.search([query], params.integer("topk", k, minimum=1))
    if not hits:
        raise ValueError(f"query = {query!r} finds no passage in the index {retriever.name!r}: it is empty or holds "
                         "only words the index leaves out (stop words); give a question with words of the corpus")
    return hits
