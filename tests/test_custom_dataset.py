"""A dataset by any name, end to end (augment -> train -> encode -> evaluate, tiny preset, a private work root),
and the exploration of a typed question on the run it produced."""

import json
import math

import pytest

from regrad_lib import retrieval
from regrad_lib.answering import harness
from regrad_lib.bank import encode
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, explore
from regrad_lib.io import paths, result_files
from regrad_lib.retrieval import augment
from regrad_lib.training import train

FACTS = [("Lubango", "Lubango is a city in Angola, the capital of Huíla Province."),
         ("Kyoto", "Kyoto is a city on the island of Honshu in Japan."),
         ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
         ("Everest", "Mount Everest is the highest mountain on Earth, in the Himalayas."),
         ("Ada Lovelace", "Ada Lovelace was an English mathematician who wrote the first program."),
         ("Paris", "Paris is the capital and most populous city of France."),
         ("Danube", "The Danube flows through Vienna, Budapest and Belgrade to the Black Sea."),
         ("Lima", "Lima is the capital of Peru, on the Pacific coast.")]
QUESTIONS = [("In which country is Lubango?", "Angola"), ("On which island is Kyoto?", "Honshu"),
             ("Where does the Nile flow?", "Africa"), ("What is the highest mountain?", "Mount Everest"),
             ("Who wrote the first program?", "Ada Lovelace"), ("What is the capital of France?", "Paris"),
             ("Through which cities does the Danube flow?", "Vienna"), ("What is the capital of Peru?", "Lima")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGRAD_WORK", str(root / "work"))
        corpus = root / "corpus.tsv"
        corpus.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{text} A trivia fact.\t{title}\n"
                                                       for i, (title, text) in enumerate(FACTS, 1)))
        (root / "data" / "myqa").mkdir(parents=True)
        (root / "data" / "myqa" / "dev.jsonl").write_text(
            "".join(json.dumps({"question": f"Trivia: {q}", "answer": a}) + "\n" for q, a in QUESTIONS[:4]))
        (root / "data" / "myqa" / "train.json").write_text(
            json.dumps([{"question": f"Trivia: {q}", "answer": [a]} for q, a in QUESTIONS]))
        index = retrieval.build(corpus, "custom-idx")
        files = {split: augment.augment_all(["myqa"], split, retriever=index, data_root=str(root / "data"))["myqa"]
                 for split in ("dev", "train")}
        preset = train.configure("tiny", max_steps=2).replace(train={"meta_batch_size": 2, "validation_size": 2})
        summary = train.train("custom", preset, ["myqa"])
        bank = encode.encode("custom", "myqa", "dev", scheme="fp32")
        scores = evaluate.evaluate("custom", "myqa", ["closed_book", "rag", "regrad", "no_update"], scheme="fp32")
        yield {"files": files, "summary": summary, "bank": bank, "scores": scores, "index": index}


def test_a_custom_dataset_runs_augment_train_encode_evaluate(run):
    assert run["files"]["dev"] == paths.augmented_file("myqa", "dev")
    dev = json.loads(run["files"]["dev"].read_text())
    assert [r["answers"] for r in dev] == [[a] for _, a in QUESTIONS[:4]] and len(dev[0]["passage_ids"]) == 3
    assert dev[0]["titles"][0] == "Lubango"                       # BM25 found the passage of the question
    assert run["summary"]["steps"] == 2 and run["summary"]["train_datasets"] == ["myqa"]
    assert (paths.adapter_dir("custom") / "adapter_model.safetensors").is_file()
    assert run["bank"] == paths.bank_dir(3, "custom", "myqa", "dev", "fp32")
    assert (run["bank"] / "manifest.json").is_file()
    assert {m: s["n"] for m, s in run["scores"].items()} == dict.fromkeys(["closed_book", "rag", "regrad",
                                                                          "no_update"], 4)
    assert {r["dataset"] for r in result_files.summary_rows("custom")} == {"myqa"}


def test_explore_a_typed_question(run):
    learner = Learner.from_run("custom")
    seen = explore.explore(learner, run["index"], "Which city is the capital of Huíla Province?", answer="Lubango",
                           gamma=100.0)
    assert [h.title for h in seen.passages][0] == "Lubango" and len(seen.passages) == 3
    assert list(seen.answers) == ["closed_book", "rag", "regrad", "no_update"]
    rows = {m: harness.run_method(m, learner, [seen.task], gamma=100.0)[0]
            for m in ("closed_book", "rag", "regrad_online", "no_update")}
    assert seen.answers["rag"] == rows["rag"]["prediction"]
    assert seen.answers["regrad"] == rows["regrad_online"]["prediction"]
    assert "".join(seen.tokens) == " Lubango<|im_end|>"     # the label: answer + end-of-turn
    # the per-token probabilities are the answer NLL of the harness, token by token
    for key, method in (("before", "no_update"), ("after", "regrad_online")):
        probs = seen.probabilities[key]
        assert len(probs) == len(seen.tokens)
        assert -sum(math.log(p) for p in probs) / len(probs) == pytest.approx(rows[method]["answer_nll"], rel=1e-5)
    assert seen.probabilities["before"] != pytest.approx(seen.probabilities["after"], rel=1e-3)   # the update acts
    assert "| regrad |" in seen._repr_markdown_() and "Lubango" in seen._repr_markdown_()
    with pytest.raises(ValueError, match="question is empty.*None to skip"):
        explore.explore(learner, run["index"], "  ")
    assert seen.figure().axes[0].get_title() == "Answer 'Lubango': token probabilities"
    described = seen.export(paths.question_adapter_dir("custom", "explore"), run="custom")
    assert described["r"] == learner.preset.peft.r


def test_no_question_skips_the_exploration_without_loading_anything():
    skipped = explore.explore(lambda: pytest.fail("loaded the learner"), None, None)
    assert isinstance(skipped, explore.Skipped) and "skipped" in skipped._repr_markdown_()
    assert skipped.figure() is skipped and skipped.export("unused") is skipped
