"""Elasticsearch backend: exact request bodies, build/search against a recording fake client, fail-fast errors.

No server can run on the development machine; live tests run only when REGRAD_ES_URL is set.
"""

from __future__ import annotations

import os
import time

import pytest

from regrad_lib import retrieval
from regrad_lib.data.corpus import Passage
from regrad_lib.retrieval import elastic
from regrad_lib.retrieval.elastic import EsOptions
from regrad_lib.retrieval.interface import Hit, RetrievalError


def test_index_body():
    assert elastic.index_body() == {
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {
            "id": {"type": "keyword"},
            "title": {"type": "text", "analyzer": "english"},
            "text": {"type": "text", "analyzer": "english"},
        }},
    }


def test_bulk_operations():
    ops = elastic.bulk_operations([Passage("7", "T", "x"), Passage("9", "U", "y")], "wiki")
    assert ops == [{"index": {"_index": "wiki", "_id": "7"}}, {"id": "7", "title": "T", "text": "x"},
                   {"index": {"_index": "wiki", "_id": "9"}}, {"id": "9", "title": "U", "text": "y"}]


def test_msearch_body_and_query_cut():
    long = " ".join(f"w{i}" for i in range(300))
    body = elastic.msearch_body(['Who wrote "Hamlet"?', long], 3, "wiki")
    assert body[0] == {"index": "wiki"}
    assert body[1] == {"query": {"multi_match": {"query": 'Who wrote "Hamlet"?', "type": "best_fields",
                                                 "fields": ["title", "text"], "tie_breaker": 0.5}},
                       "sort": [{"_score": "desc"}, {"id": "asc"}], "track_scores": True,
                       "size": 3, "_source": ["id", "title", "text"]}
    assert body[2] == {"index": "wiki"}
    assert body[3]["query"]["multi_match"]["query"] == " ".join(f"w{i}" for i in range(256))
    assert len(body) == 4


class FakeIndices:
    def __init__(self, es):
        self.es = es

    def exists(self, index):
        return index in self.es.indexes

    def create(self, index, **body):
        self.es.calls.append(("create", index, body))
        self.es.indexes[index] = {"docs": {}, "meta": {}}

    def put_mapping(self, index, meta):
        self.es.calls.append(("put_mapping", index, meta))
        self.es.indexes[index]["meta"] = meta

    def get_mapping(self, index):
        return {index: {"mappings": {"_meta": self.es.indexes[index]["meta"]}}}

    def refresh(self, index):
        pass

    def delete(self, index):
        del self.es.indexes[index]


class FakeES:
    """Records requests; ``drop`` bulk documents are acknowledged but lost (a server out of disk)."""

    def __init__(self, drop=0):
        self.indexes, self.calls, self.drop = {}, [], drop
        self.indices = FakeIndices(self)

    def bulk(self, operations, refresh):
        self.calls.append(("bulk", operations))
        for action, doc in zip(operations[::2], operations[1::2]):
            if self.drop:
                self.drop -= 1
                continue
            self.indexes[action["index"]["_index"]]["docs"][action["index"]["_id"]] = doc
        return {"errors": False, "items": []}

    def count(self, index):
        return {"count": len(self.indexes[index]["docs"])}

    def msearch(self, searches):
        self.calls.append(("msearch", searches))
        out = []
        for header, body in zip(searches[::2], searches[1::2]):
            docs = self.indexes[header["index"]]["docs"]
            words = set(body["query"]["multi_match"]["query"].lower().split())
            hits = [{"_id": i, "_score": float(len(words & set(d["text"].lower().split()))), "_source": d}
                    for i, d in docs.items()]
            hits = sorted([h for h in hits if h["_score"]], key=lambda h: -h["_score"])[:body["size"]]
            out.append({"hits": {"hits": hits}})
        return {"responses": out}


@pytest.fixture()
def tsv(tmp_path):
    path = tmp_path / "c.tsv"
    path.write_text("id\ttext\ttitle\n1\tberlin capital germany\tBerlin\n2\tparis capital france\tParis\n"
                    "3\tcat sofa\tCats\n")
    return path


def test_build_and_search_with_fake_client(tsv):
    es = FakeES()
    r = retrieval.build(tsv, "wiki", backend="elasticsearch", client=es, chunk_size=2)
    creates = [c for c in es.calls if c[0] == "create"]
    assert creates == [("create", "wiki", elastic.index_body())]
    bulks = [c[1] for c in es.calls if c[0] == "bulk"]
    assert [len(b) // 2 for b in bulks] == [2, 1]
    assert es.indexes["wiki"]["meta"]["regrad"]["count"] == 3
    [[hit], []] = r.search(["germany", "nothing"], k=1)
    assert hit == Hit("1", "Berlin", "berlin capital germany", 1.0)
    assert es.calls[-1] == ("msearch", elastic.msearch_body(["germany", "nothing"], 1, "wiki"))
    assert retrieval.open("wiki", backend="elasticsearch", client=es).count() == 3
    assert retrieval.build(tsv, "wiki", backend="elasticsearch", client=es).count() == 3  # complete: reused


def test_missing_documents_are_an_error(tsv):
    with pytest.raises(RetrievalError, match=r"holds 2 documents but 3 passages were read.*1 missing.*disk"):
        retrieval.build(tsv, "wiki", backend="elasticsearch", client=FakeES(drop=1))


def test_unfinished_index_is_refused(tsv):
    es = FakeES(drop=1)
    with pytest.raises(RetrievalError):
        retrieval.build(tsv, "wiki", backend="elasticsearch", client=es)
    with pytest.raises(RetrievalError, match="never finished.*resume"):
        retrieval.open("wiki", backend="elasticsearch", client=es)
    assert retrieval.build(tsv, "wiki", backend="elasticsearch", client=es).count() == 3  # resumed


def test_unreachable_server_fails_fast(monkeypatch):
    monkeypatch.setenv("REGRAD_ES_API_KEY", "secret-key")
    url = "http://user:pw@127.0.0.1:9"
    start = time.monotonic()
    with pytest.raises(RetrievalError) as e:
        retrieval.open("wiki", backend="elasticsearch", url=url)
    assert time.monotonic() - start < 10
    message = str(e.value)
    assert "http://***@127.0.0.1:9" in message and "retriever='tantivy'" in message
    assert "secret-key" not in message and "pw" not in message


def test_missing_url_names_the_variable(monkeypatch):
    monkeypatch.delenv("REGRAD_ES_URL", raising=False)
    with pytest.raises(ValueError, match="REGRAD_ES_URL.*tantivy"):
        retrieval.open("wiki", backend="elasticsearch")
    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['urll'\]"):
        retrieval.open("wiki", backend="elasticsearch", urll="x")


@pytest.mark.elasticsearch
@pytest.mark.skipif(not os.environ.get("REGRAD_ES_URL"), reason="needs a live server at REGRAD_ES_URL")
def test_live_server(tsv):
    name = f"regrad-test-{os.getpid()}"
    r = retrieval.build(tsv, name, backend="elasticsearch", rebuild=True)
    assert r.count() == 3
    assert r.search(["capital of Germany"], 1)[0][0].passage_id == "1"
    assert r.search(['"unbalanced quote: (paren'], 1) is not None


def test_repr_masks_the_api_key_and_the_url_password():
    shown = repr(EsOptions(url="https://elastic:s3cret@es.example.org:9243", api_key="QUtFWS1TRUNSRVQ=", client=None))
    assert "s3cret" not in shown and "QUtFWS1TRUNSRVQ=" not in shown
    assert "url='https://***@es.example.org:9243'" in shown and "api_key='***'" in shown
    assert "chunk_size=500" in shown
    assert "api_key=None" in repr(EsOptions(url="http://localhost:9200", api_key=None))
