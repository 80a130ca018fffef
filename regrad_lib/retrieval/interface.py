"""The retrieval interface both BM25 backends share (:mod:`regrad_lib.retrieval`: tantivy and dispatch;
:mod:`regrad_lib.retrieval.elastic`: Elasticsearch): the hit and retriever types and the query
cut (the corpus signature each index's manifest records is :func:`regrad_lib.data.corpus.signature`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

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
