"""The retrieval interface both BM25 backends share (:mod:`regrad_lib.retrieval`: tantivy and dispatch;
:mod:`regrad_lib.retrieval_es`: Elasticsearch): the hit and retriever types, the query cut and the corpus
signature recorded in each index's manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence, get_args

from . import paths

Backend = Literal["tantivy", "elasticsearch"]
BACKENDS: tuple[str, ...] = get_args(Backend)
MAX_QUERY_TOKENS = 256
TIE_BREAKER = 0.5


class RetrievalError(RuntimeError):
    """An index that is missing, incomplete or corrupted, or a search server that cannot be used."""


@dataclass(frozen=True)
class Hit:
    passage_id: str
    title: str
    text: str
    score: float


class Retriever(Protocol):
    name: str
    backend: str

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        """The top-``k`` passages of each query, best first."""

    def count(self) -> int:
        """How many passages the index holds."""

    def describe(self) -> dict:
        """Provenance (index name, backend, corpus) without credentials."""


def cut_query(query: str, max_tokens: int = MAX_QUERY_TOKENS) -> str:
    """The query's first ``max_tokens`` whitespace tokens (the public setup's 256-token cut)."""
    tokens = query.split()
    return " ".join(tokens[:max_tokens])


def corpus_signature(corpus_path: Path) -> dict:
    """What identifies a corpus file in a manifest: path (as users write it), size, and a sha256 fingerprint
    of its first and last MiB (a checkout or a copy changes the mtime, not the content)."""
    size = corpus_path.stat().st_size
    digest = hashlib.sha256()
    with corpus_path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return {"path": paths.relative(corpus_path), "size": size, "fingerprint": digest.hexdigest()[:16]}


def same_corpus(a: dict | None, b: dict | None) -> bool:
    """Two signatures name the same content (the path may differ)."""
    return bool(a and b) and a.get("size") == b.get("size") and a.get("fingerprint") == b.get("fingerprint")
