"""The Elasticsearch backend of :mod:`regrad_lib.retrieval` (for corpora or teams that outgrow the embedded index).

The request bodies are the public setup's (method.md "Data"): the ``english`` analyzer on ``title`` and ``text``,
``multi_match`` of type ``best_fields`` over both with ``tie_breaker`` 0.5, the query cut to 256 tokens. They are
built by pure functions (:func:`index_body`, :func:`bulk_operations`, :func:`msearch_body`) that the tests check.

URL and API key come from the options or from ``REGRAD_ES_URL`` / ``REGRAD_ES_API_KEY``; they are never written
to a manifest, a log line or an error message (user:password in a URL is redacted).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from regrad_lib.io import params, paths
from regrad_lib.retrieval.interface import (
    MAX_QUERY_TOKENS,
    TIE_BREAKER,
    Hit,
    RetrievalError,
    cut_query,
)

log = logging.getLogger(__name__)

_HINT = "or use the embedded backend (retriever='tantivy'), which needs no server"
_META_KEY = "regrad"


@dataclass
class EsOptions:
    """How to reach and use the server. ``client``: a ready ``Elasticsearch`` client (tests pass a fake)."""
    url: str | None = None             # default: $REGRAD_ES_URL
    api_key: str | None = None         # default: $REGRAD_ES_API_KEY
    request_timeout: float = 60.0
    connect_timeout: float = 3.0       # the reachability check fails within about this many seconds
    chunk_size: int = 500              # passages per bulk request
    max_retries: int = 3               # per bulk chunk (429 rejections and timeouts), with backoff
    search_batch: int = 64             # queries per msearch request
    shards: int = 1
    rebuild: bool = False
    verify_certs: bool = True
    client: Any = None

    def __post_init__(self) -> None:
        params.check_fields(self)
        self.url = self.url or os.environ.get("REGRAD_ES_URL")
        self.api_key = self.api_key or os.environ.get("REGRAD_ES_API_KEY")
        if self.client is None and not self.url:
            raise ValueError("No Elasticsearch URL: pass url=... or set REGRAD_ES_URL (e.g. http://localhost:9200), "
                             + _HINT)
        for f in ("chunk_size", "search_batch", "shards"):
            if getattr(self, f) < 1:
                raise ValueError(f"EsOptions.{f}={getattr(self, f)!r}: must be a positive integer")

    def __repr__(self) -> str:   # the credentials stay out of logs and notebook outputs, as in error messages
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown.update(url=redact(self.url) if self.url else None, api_key="***" if self.api_key else None)
        return f"EsOptions({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_dict(cls, options: dict) -> EsOptions:
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"Unknown option(s) {unknown} for the elasticsearch backend; allowed: {allowed}")
        return cls(**options)


def redact(url: str | None) -> str:
    """A URL without its user:password part, for messages."""
    if not url:
        return "<client>"
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


# --- request bodies ------------------------------------------------------------------------------------------

def index_body(shards: int = 1) -> dict:
    """``indices.create`` keyword arguments: english analyzer on title and text, the id as a keyword."""
    return {
        "settings": {"number_of_shards": shards, "number_of_replicas": 0},
        "mappings": {"properties": {
            "id": {"type": "keyword"},
            "title": {"type": "text", "analyzer": "english"},
            "text": {"type": "text", "analyzer": "english"},
        }},
    }


def bulk_operations(passages: Iterable, index: str) -> list[dict]:
    """The ``bulk`` body for passages: an ``index`` action keyed by passage id, then the document."""
    ops: list[dict] = []
    for p in passages:
        pid = str(p.id)
        ops.append({"index": {"_index": index, "_id": pid}})
        ops.append({"id": pid, "title": p.title, "text": p.text})
    return ops


def search_body(query: str, k: int) -> dict:
    """One query; equal scores ordered by passage id (as the embedded backend), not by shard or segment."""
    return {"query": {"multi_match": {"query": cut_query(query, MAX_QUERY_TOKENS), "type": "best_fields",
                                      "fields": ["title", "text"], "tie_breaker": TIE_BREAKER}},
            "sort": [{"_score": "desc"}, {"id": "asc"}], "track_scores": True,
            "size": k, "_source": ["id", "title", "text"]}


def msearch_body(queries: Sequence[str], k: int, index: str) -> list[dict]:
    """The ``msearch`` body: a header naming the index, then the query, for each query."""
    body: list[dict] = []
    for q in queries:
        body.append({"index": index})
        body.append(search_body(q, k))
    return body


# --- client ------------------------------------------------------------------------------------------------

def connect(options: EsOptions):
    """A client that has answered a ping-like ``info()``; an unreachable server raises quickly with the URL."""
    from elasticsearch import ApiError, Elasticsearch, TransportError

    if options.client is not None:
        return options.client
    kwargs: dict[str, Any] = {"request_timeout": options.request_timeout, "max_retries": options.max_retries,
                              "retry_on_timeout": True, "verify_certs": options.verify_certs}
    if options.api_key:
        kwargs["api_key"] = options.api_key
    client = Elasticsearch(options.url, **kwargs)
    try:
        client.options(request_timeout=options.connect_timeout, max_retries=0).info()
    except (TransportError, ApiError) as e:
        raise RetrievalError(f"Elasticsearch at {redact(options.url)} is unreachable or refused the request "
                             f"({type(e).__name__}: {e}). Start the server or fix REGRAD_ES_URL / "
                             f"REGRAD_ES_API_KEY, {_HINT}") from e
    return client


def _bulk(client, ops: list[dict], options: EsOptions) -> None:
    """Send one bulk chunk; retry rejected (429) items and timeouts with backoff, raise on any other failure."""
    from elastic_transport import ConnectionTimeout

    for attempt in range(options.max_retries + 1):
        try:
            response = client.bulk(operations=ops, refresh=False)
        except ConnectionTimeout:
            if attempt == options.max_retries:
                raise
            time.sleep(2 ** attempt)
            continue
        if not response.get("errors"):
            return
        retry: list[dict] = []
        for i, item in enumerate(response["items"]):
            result = item.get("index", {})
            status = result.get("status", 200)
            if status == 429:
                retry.extend(ops[2 * i: 2 * i + 2])
            elif status >= 300:
                raise RetrievalError(f"Elasticsearch rejected passage {result.get('_id')!r} "
                                     f"(status {status}: {result.get('error')}); fix the cause (disk watermark, "
                                     f"mapping) and rerun the build to resume")
        if not retry:
            return
        ops = retry
        time.sleep(2 ** attempt)
    raise RetrievalError(f"Elasticsearch kept rejecting {len(ops) // 2} passages (429 Too Many Requests) after "
                         f"{options.max_retries} retries: lower chunk_size or give the server more resources")


def _meta(client, name: str) -> dict:
    mapping = client.indices.get_mapping(index=name)
    body = mapping[name] if name in mapping else next(iter(mapping.values()))
    return (body.get("mappings", {}).get("_meta") or {}).get(_META_KEY, {})


def build(corpus_path: Path, name: str, **options) -> EsRetriever:
    """Index the corpus in Elasticsearch index ``name``; resume re-sends from shortly before the stored count."""
    from tqdm.auto import tqdm

    from regrad_lib.data import corpus

    opts = EsOptions.from_dict(options)
    client = connect(opts)
    signature = corpus.signature(corpus_path)
    expected = corpus.count(corpus_path)
    if opts.rebuild and client.indices.exists(index=name):
        client.indices.delete(index=name)
    start = 0
    if client.indices.exists(index=name):
        meta = _meta(client, name)
        if meta.get("corpus") is not None and not corpus.same_signature(meta.get("corpus"), signature):
            raise RetrievalError(f"Elasticsearch index {name!r} was built from {meta.get('corpus')}, not "
                                 f"{signature}: pass rebuild=True or choose another name")
        if meta.get("count") is not None:   # recorded only when a build finished and passed the count check
            log.info("Elasticsearch index %r is complete (%d passages); reopening it", name, meta["count"])
            return open(name, **options)
        client.indices.refresh(index=name)
        start = max(0, client.count(index=name)["count"] - 10 * opts.chunk_size)  # ids make re-sends idempotent
        log.info("Resuming Elasticsearch index %r from passage %d", name, start)
    else:
        client.indices.create(index=name, **index_body(opts.shards))
        client.indices.put_mapping(index=name, meta={_META_KEY: {"corpus": signature}})
    read = start
    with tqdm(total=expected, initial=start, desc=f"Indexing into Elasticsearch {name}", unit="passage",
              unit_scale=True, mininterval=2.0) as bar:
        stream = itertools.islice(corpus.read(corpus_path), start, None)
        while chunk := list(itertools.islice(stream, opts.chunk_size)):
            _bulk(client, bulk_operations(chunk, name), opts)
            read += len(chunk)
            bar.update(len(chunk))
    client.indices.refresh(index=name)
    found = client.count(index=name)["count"]
    if found != read:
        raise RetrievalError(f"Elasticsearch index {name!r} holds {found} documents but {read} passages were read "
                             f"from {paths.relative(corpus_path)} ({read - found} missing). Likely cause: the "
                             f"server stopped accepting writes (disk watermark: free disk space, see GET "
                             f"_cluster/allocation/explain); then rerun the build to resume")
    client.indices.put_mapping(index=name, meta={_META_KEY: {"corpus": signature, "count": found}})
    return EsRetriever(name, client, opts, {"corpus": signature, "count": found})


def open(name: str, **options) -> EsRetriever:  # noqa: A001 - the public name
    opts = EsOptions.from_dict(options)
    client = connect(opts)
    if not client.indices.exists(index=name):
        raise RetrievalError(f"Elasticsearch index {name!r} not found at {redact(opts.url)}: build it with "
                             f"retrieval.build(corpus, {name!r}, backend='elasticsearch')")
    meta = _meta(client, name)
    found = client.count(index=name)["count"]
    if meta.get("count") != found:
        raise RetrievalError(f"Elasticsearch index {name!r} holds {found} documents but its build recorded "
                             f"{meta.get('count')} (None: the build never finished): rerun retrieval.build(corpus, "
                             f"{name!r}, backend='elasticsearch') to resume it")
    return EsRetriever(name, client, opts, meta)


class EsRetriever:
    backend = "elasticsearch"

    def __init__(self, name: str, client, options: EsOptions, meta: dict):
        self.name = name
        self._client = client
        self.options = options
        self.manifest = meta

    def count(self) -> int:
        return self._client.count(index=self.name)["count"]

    def describe(self) -> dict:
        return {"index": self.name, "backend": self.backend, "corpus": self.manifest.get("corpus"),
                "count": self.manifest.get("count")}

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        if isinstance(queries, str):
            raise TypeError("search() takes a list of queries; wrap a single query as [query]")
        out: list[list[Hit]] = []
        for i in range(0, len(queries), self.options.search_batch):
            batch = list(queries[i:i + self.options.search_batch])
            response = self._client.msearch(searches=msearch_body(batch, k, self.name))
            for q, r in zip(batch, response["responses"]):
                if "error" in r:
                    raise RetrievalError(f"Elasticsearch failed on query {q[:80]!r}: {r['error']}")
                out.append([Hit(str(h["_source"]["id"]), h["_source"]["title"], h["_source"]["text"],
                                float(h["_score"])) for h in r["hits"]["hits"]])
        return out

    def __repr__(self) -> str:
        return f"EsRetriever(name={self.name!r}, url={redact(self.options.url)!r})"
