"""The embedded BM25 backend: a tantivy index under ``indexes/<name>/`` (the default of
:func:`regrad_lib.retrieval.build` and :func:`regrad_lib.retrieval.open`), built resumably, searched in threads."""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from regrad_lib.data import corpus
from regrad_lib.io import artifacts, ownership, params, paths
from regrad_lib.retrieval.interface import (
    MAX_QUERY_TOKENS,
    TIE_BREAKER,
    Hit,
    RetrievalError,
    cut_query,
)

log = logging.getLogger(__name__)

MANIFEST = "regrad_manifest.json"
BUILD_STATE = "regrad_build.json"
_FORMAT = 1
_ANALYZER = "en_bm25"
ANALYZER_SETTINGS = {"name": _ANALYZER, "tokenizer": "simple", "remove_long": 40, "lowercase": True,
                     "stopwords": "english", "stemmer": "english"}


@dataclass
class TantivyOptions:
    """Embedded index settings. ``threads``/``heap_mb``: the writer's indexing threads and total memory budget."""
    threads: int = 2
    heap_mb: int = 256
    commit_every: int = 200_000      # passages between commits: an interrupted build resumes from the last one
    rebuild: bool = False
    # A batch is searched by this many threads (tantivy releases the GIL): every core, up to 8, by default.
    search_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    def __post_init__(self) -> None:
        params.check_fields(self)          # rebuild="false" is False, not a truthy string
        for f in ("threads", "heap_mb", "commit_every", "search_threads"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TantivyOptions.{f}={value!r}: must be a positive integer")
        if self.heap_mb < 15 * self.threads:
            raise ValueError(f"TantivyOptions.heap_mb={self.heap_mb} is below tantivy's minimum of 15 MB per "
                             f"thread for threads={self.threads}: raise heap_mb or lower threads")

    @classmethod
    def from_dict(cls, options: dict) -> TantivyOptions:
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"Unknown option(s) {unknown} for the tantivy backend; allowed: {allowed}")
        return cls(**options)


def _write_error(folder: Path, error: Exception) -> RetrievalError:
    return RetrievalError(f"Index {folder}: writing failed ({error}); free disk space there (or set "
                          "REGRAD_WORK to a larger disk) and run retrieval.build again: it resumes after the last "
                          "commit")


def _tantivy():
    import tantivy
    return tantivy


def _analyzer():
    t = _tantivy()
    return (t.TextAnalyzerBuilder(t.Tokenizer.simple()).filter(t.Filter.remove_long(40))
            .filter(t.Filter.lowercase()).filter(t.Filter.stopword("english"))
            .filter(t.Filter.stemmer("english")).build())


def _schema():
    t = _tantivy()
    sb = t.SchemaBuilder()
    sb.add_text_field("id", stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field("title", stored=True, tokenizer_name=_ANALYZER, index_option="freq")
    sb.add_text_field("text", stored=True, tokenizer_name=_ANALYZER, index_option="freq")
    return sb.build()


class TantivyRetriever:
    """An on-disk tantivy BM25 index under ``indexes/<name>/``."""

    backend = "tantivy"

    def __init__(self, name: str, index, manifest: dict, options: TantivyOptions):
        self.name = name
        self.options = options
        self.manifest = manifest
        self._index = index
        self._schema = index.schema
        self._analyzer = _analyzer()
        self._searcher = index.searcher()
        self._t = _tantivy()

    # -- opening ----------------------------------------------------------------------------------------
    @staticmethod
    def _open_index(folder: Path):
        t = _tantivy()
        try:
            index = t.Index.open(str(folder))
        except ValueError as e:
            raise RetrievalError(f"Index {folder} is corrupted or unreadable ({e}); rebuild it: "
                                 f"retrieval.build(corpus, {folder.name!r}, rebuild=True)") from e
        index.register_tokenizer(_ANALYZER, _analyzer())
        return index

    @classmethod
    def open(cls, name: str, options: TantivyOptions | None = None) -> TantivyRetriever:
        options = options or TantivyOptions()
        folder = paths.index_dir(name)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            if (folder / BUILD_STATE).is_file():
                raise RetrievalError(f"Index {paths.relative(folder)} is incomplete (its build was interrupted): "
                                     f"run retrieval.build(corpus, {name!r}) again to resume it")
            raise RetrievalError(f"Index {paths.relative(folder)} not found: it is written by 01_index "
                                 f"(retrieval.build(corpus, {name!r}))")
        manifest = artifacts.read_json(manifest_path)
        if manifest.get("analyzer") != ANALYZER_SETTINGS or manifest.get("format") != _FORMAT:
            raise RetrievalError(f"Index {paths.relative(folder)} was built with other settings "
                                 f"({manifest.get('analyzer')}); rebuild it with rebuild=True")
        index = cls._open_index(folder)
        index.reload()
        found = index.searcher().num_docs
        if found != manifest["count"]:
            raise RetrievalError(f"Index {paths.relative(folder)} holds {found} passages but its manifest says "
                                 f"{manifest['count']}: the index is incomplete or damaged; rebuild it with "
                                 f"retrieval.build(corpus, {name!r}, rebuild=True)")
        return cls(name, index, manifest, options)

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus_path: Path, name: str, options: TantivyOptions) -> TantivyRetriever:
        folder = paths.index_dir(name)
        signature = corpus.signature(corpus_path)
        if options.rebuild and (folder.exists() or folder.is_symlink()):
            ownership.remove(folder, paths.index_dir(name).parent, "index", (MANIFEST, BUILD_STATE),
                             "choose another index name")
        if (folder / MANIFEST).is_file():
            manifest = artifacts.read_json(folder / MANIFEST)
            if not corpus.same_signature(manifest.get("corpus"), signature):
                raise RetrievalError(f"Index {paths.relative(folder)} was built from {manifest.get('corpus')}, "
                                     f"not {signature}: pass rebuild=True to rebuild it, or choose another name")
            log.info("Index %s is complete (%d passages); reopening it", paths.relative(folder), manifest["count"])
            return cls.open(name, options)

        state_path = folder / BUILD_STATE
        state = {"corpus": signature, "analyzer": ANALYZER_SETTINGS, "format": _FORMAT}
        if state_path.is_file():
            previous = artifacts.read_json(state_path)
            if not corpus.same_signature(previous.get("corpus"), signature) or \
                    previous.get("analyzer") != ANALYZER_SETTINGS:
                raise RetrievalError(f"The partial index {paths.relative(folder)} was started from "
                                     f"{previous.get('corpus')}, not {signature}: pass rebuild=True to start over")
            index = cls._open_index(folder)
        else:
            if folder.exists() and any(folder.iterdir()):
                raise RetrievalError(f"{paths.relative(folder)} exists but is not a regrad index: remove it or "
                                     f"pass rebuild=True")
            folder.mkdir(parents=True, exist_ok=True)
            artifacts.write_json(state_path, state)
            index = _tantivy().Index(_schema(), path=str(folder), reuse=False)
            index.register_tokenizer(_ANALYZER, _analyzer())
        index.reload()
        done = index.searcher().num_docs   # committed passages = the corpus prefix already indexed
        if done:
            log.info("Resuming the build of %s after %d committed passages", paths.relative(folder), done)
        started = time.perf_counter()
        total = cls._index_passages(index, corpus.read(corpus_path), done, corpus.count(corpus_path), options,
                                    folder)
        manifest = {"backend": "tantivy", "format": _FORMAT, "name": name, "corpus": signature, "count": total,
                    "analyzer": ANALYZER_SETTINGS, "fields": ["title", "text"], "stored": ["id", "title", "text"],
                    "scoring": {"model": "BM25", "k1": 1.2, "b": 0.75, "query": "dis_max(title, text)",
                                "tie_breaker": TIE_BREAKER, "max_query_tokens": MAX_QUERY_TOKENS},
                    "writer": {"threads": options.threads, "heap_mb": options.heap_mb},
                    "build_seconds_last_run": round(time.perf_counter() - started, 3),
                    **artifacts.provenance()}
        artifacts.follow_umask(folder)     # tantivy writes meta.json and .managed.json 0600
        artifacts.write_json(folder / MANIFEST, manifest)
        state_path.unlink()
        log.info("Index %s built: %d passages", paths.relative(folder), total)
        return cls.open(name, options)

    @classmethod
    def _index_passages(cls, index, passages: Iterable, done: int, expected: int | None,
                        options: TantivyOptions, folder: Path) -> int:
        from tqdm.auto import tqdm

        t = _tantivy()
        writer = index.writer(options.heap_mb * 1_000_000, options.threads)
        total = done
        bar = tqdm(total=expected, initial=done, desc="Indexing passages", unit="passage", unit_scale=True,
                   mininterval=2.0)
        try:
            for p in itertools.islice(passages, done, None):   # corpus errors pass through unchanged
                try:
                    writer.add_document(t.Document(id=str(p.id), title=p.title, text=p.text))
                    total += 1
                    if total % 10_000 == 0:
                        bar.update(10_000)
                    if total % options.commit_every == 0:
                        writer.commit()
                        log.debug("Committed %d passages", total)
                except ValueError as e:   # tantivy's I/O errors (disk full, ...) name no file
                    raise _write_error(folder, e) from e
            try:
                writer.commit()
                writer.wait_merging_threads()
            except ValueError as e:
                raise _write_error(folder, e) from e
        except BaseException:
            writer.rollback()  # uncommitted passages are dropped; the next build resumes after the last commit
            raise
        finally:
            bar.update(total - bar.n)
            bar.close()
        index.reload()
        return total

    # -- searching --------------------------------------------------------------------------------------
    def count(self) -> int:
        return self._searcher.num_docs

    def describe(self) -> dict:
        return {"index": self.name, "backend": self.backend, "corpus": self.manifest.get("corpus"),
                "count": self.manifest.get("count")}

    def terms(self, query: str) -> list[str]:
        """The analysed terms of a query (stemmed, stop words dropped) after the 256-token cut."""
        return self._analyzer.analyze(cut_query(query))

    def _query(self, query: str):
        t = self._t
        terms = self.terms(query)
        if not terms:
            return None
        per_field = [t.Query.boolean_query([(t.Occur.Should, t.Query.term_query(self._schema, f, term))
                                            for term in terms]) for f in ("title", "text")]
        return t.Query.disjunction_max_query(per_field, tie_breaker=TIE_BREAKER)

    def _search_one(self, query: str, k: int) -> list[Hit]:
        """The top ``k`` by score, equal scores by passage id: the order must not depend on which segment a
        passage landed in (indexing threads), or two builds of one corpus retrieve differently at ties."""
        q = self._query(query)
        if q is None:
            return []
        limit = k
        while True:
            hits = self._searcher.search(q, limit, count=False).hits
            # a tie at the k-th score may continue past the limit: widen until the last hit scores lower
            if len(hits) < limit or hits[-1][0] < hits[k - 1][0]:
                break
            limit *= 2
        out = []
        for score, address in hits:
            doc = self._searcher.doc(address)
            out.append(Hit(doc["id"][0], doc["title"][0], doc["text"][0], float(score)))
        return sorted(out, key=lambda h: (-h.score, h.passage_id))[:k]

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries; wrap a single query as [query]")
        # no more hits than passages: the top k of a larger k is the same list, and tantivy allocates k slots
        # (k = 10**12 aborts the process)
        k = min(params.integer("k", k, minimum=1), self.count())
        if k == 0:
            return [[] for _ in queries]
        if self.options.search_threads > 1 and len(queries) > 1:
            with ThreadPoolExecutor(self.options.search_threads) as pool:
                return list(pool.map(lambda q: self._search_one(q, k), queries))
        return [self._search_one(q, k) for q in queries]

    def __repr__(self) -> str:
        return f"TantivyRetriever(name={self.name!r}, count={self.count()}, options={asdict(self.options)})"
