"""Evaluation methods: one harness, exact batching, shift, online == bank, answer NLL, outputs and resume."""

import json

import pytest
import torch

from regrad_lib import config
from regrad_lib.answering import harness
from regrad_lib.bank import encode, on_disk, reader
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, results, sweeps
from regrad_lib.io import artifacts, paths, result_files

PASSAGES = [("Paris", "Paris is the capital and most populous city of France."),
            ("Nile", "The Nile is a major north-flowing river in northeastern Africa."),
            ("Kyoto", "Kyoto is a city on the island of Honshu in Japan."),
            ("Ada Lovelace", "Ada Lovelace was an English mathematician and writer, chiefly known for her work."),
            ("Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.")]
RUN, DATASET = "evaltest", "popqa"


def _records(n=7):
    out = []
    for i in range(n):
        picks = [(i + j) % len(PASSAGES) for j in range(3)]
        out.append({"test_id": 100 + i, "question": f"Which place {'is ' * i}named {PASSAGES[picks[0]][0]}?",
                    "answers": [PASSAGES[picks[0]][0], "alias"], "passages": [PASSAGES[p][1] for p in picks],
                    "titles": [PASSAGES[p][0] for p in picks], "passage_ids": [f"p{p}" for p in picks],
                    "scores": [3.0, 2.0, 1.0]})
    return out


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    return make_run(RUN, DATASET)


def make_run(run: str, dataset: str):
    """A saved 'trained' run (random non-zero B, large alpha), a dev file of ``dataset`` and its banks (fp32, int8,
    int4 and the default scheme). Each test module makes its own under its own names: a module that reused this
    one's would leave results behind that change what this module's tests find (order dependence)."""
    preset = config.load_preset("tiny")
    learner = Learner.create(preset, "cpu")
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
        for v in learner.alpha.values.values():
            v.fill_(0.5)
    folder = paths.output_dir(run)
    preset.save(folder)
    learner.save(folder / paths.META_STATE)
    artifacts.write_json(folder / paths.TRAIN_SUMMARY, {"run": run})   # finished, as 03_train marks it
    artifacts.write_json(paths.augmented_file(dataset, "dev"), _records())
    encode.encode_schemes(run, dataset, "dev", ["fp32", "int8", "int4", reader.DEFAULT_SCHEME], batch_size=4,
                          learner=learner, overwrite=True)
    return learner, evaluate.load_tasks(dataset), reader.open_bank(3, run, dataset, "dev", "fp32", learner=learner)


def test_online_equals_bank(run):
    learner, items, bank = run
    regrad_rows = harness.run_method("regrad", learner, items, bank=bank)
    online_rows = harness.run_method("regrad_online", learner, items)
    assert [r["prediction"] for r in regrad_rows] == [r["prediction"] for r in online_rows]
    assert [r["generated"] for r in regrad_rows] == [r["generated"] for r in online_rows]
    for a, b in zip(regrad_rows, online_rows):
        assert a["answer_nll"] == pytest.approx(b["answer_nll"], rel=1e-5)
        assert a["passage_ids"] == b["passage_ids"] == [str(p) for p in items[regrad_rows.index(a)].passage_ids]
    # the gradients do change the answers' likelihood
    plain = harness.run_method("no_update", learner, items)
    assert any(abs(a["answer_nll"] - b["answer_nll"]) > 1e-3 for a, b in zip(regrad_rows, plain))
    assert harness.predict_online(learner, items, batch_size=3) == [r["prediction"] for r in online_rows]


def test_batched_equals_one_question_at_a_time(run):
    learner, items, bank = run
    for method in ("regrad", "rag", "no_update"):
        batched = harness.run_method(method, learner, items, bank=bank, batch_size=4)
        single = harness.run_method(method, learner, items, bank=bank, batch_size=1)
        assert [r["generated"] for r in batched] == [r["generated"] for r in single], method
        assert [r["answer_nll"] for r in batched] == pytest.approx([r["answer_nll"] for r in single], rel=1e-5)
        assert [r["test_id"] for r in batched] == [t.test_id for t in items]    # input order kept


def test_answer_nll_matches_equation_2_by_hand(run):
    """Row 2 of regrad: phi' = phi - alpha * (sum of its passages' gradients), loss on ' answer' + end-of-turn only."""
    learner, items, bank = run
    rows = harness.run_method("regrad", learner, items, bank=bank, gamma=2.0)
    task, cfg = items[2], learner.preset.learner
    passages = task_batches.passage_batch(learner.tokenizer, task.passages, cfg.bank_context_len)
    grad = regrad.summed_gradient(learner.model, learner.phi, passages)
    adapted = {n: (p - 2.0 * learner.alpha[n] * grad[n]).detach() for n, p in learner.phi.items()}
    with torch.no_grad(), lora.use(learner.model, adapted):
        want = regrad.token_losses(learner.model, task_batches.qa_batch(learner.tokenizer, [task], cfg)).item()
    assert rows[2]["answer_nll"] == pytest.approx(want, rel=1e-5)
    with torch.no_grad(), lora.disabled(learner.model):
        base = regrad.token_losses(learner.model, task_batches.qa_batch(learner.tokenizer, [task], cfg)).item()
    assert harness.run_method("closed_book", learner, items)[2]["answer_nll"] == pytest.approx(base, rel=1e-6)


def test_prompt_methods_match_equation_2_by_hand(run):
    """Row 2 by hand: rag is the base model with the passages in the prompt; regrad_icl the update of its own
    passages with them; its controls no_update_icl phi with them, shift_icl question 1's update with them."""
    learner, items, bank = run
    model, tok, cfg, task = learner.model, learner.tokenizer, learner.preset.learner, items[2]
    phi = {n: p.detach() for n, p in learner.phi.items()}

    def nll(weights, context):
        batch = task_batches.qa_batch(tok, [task], cfg, with_context=context, stage="eval")
        with torch.no_grad(), (lora.disabled(model) if weights is None else lora.use(model, weights)):
            return regrad.token_losses(model, batch).item()

    def updated(source):
        grad = regrad.summed_gradient(model, learner.phi, task_batches.passage_batch(tok, source.passages,
                                                                               cfg.bank_context_len))
        return {n: (p - cfg.gamma * learner.alpha[n] * grad[n]).detach() for n, p in learner.phi.items()}

    want = {"rag": nll(None, True), "regrad_icl": nll(updated(task), True), "no_update_icl": nll(phi, True),
            "shift_icl": nll(updated(items[1]), True)}
    for method, value in want.items():
        rows = harness.run_method(method, learner, items, bank=bank)
        assert rows[2]["answer_nll"] == pytest.approx(value, rel=1e-5), method
    # the four differ from each other and from their passage-less twins: the test can tell them apart
    twins = {"rag": nll(None, False), "regrad_icl": nll(updated(task), False), "no_update_icl": nll(phi, False),
             "shift_icl": nll(updated(items[1]), False)}
    values = list(want.values()) + list(twins.values())
    assert all(abs(a - b) > 1e-4 for i, a in enumerate(values) for b in values[i + 1:])


def test_shift_uses_previous_question_gradients(run):
    learner, items, bank = run
    shifted = harness.run_method("shift", learner, items, bank=bank)
    assert shifted[0]["passage_ids"] == list(items[-1].passage_ids)
    assert [r["passage_ids"] for r in shifted[1:]] == [list(t.passage_ids) for t in items[:-1]]
    moved = [task_batches.Task(t.test_id, t.question, t.answers, t.passages, items[i - 1].passage_ids)
             for i, t in enumerate(items)]
    want = harness.run_method("regrad", learner, moved, bank=bank)
    assert [r["generated"] for r in shifted] == [r["generated"] for r in want]
    assert [r["answer_nll"] for r in shifted] == pytest.approx([r["answer_nll"] for r in want], rel=1e-6)
    own = harness.run_method("regrad", learner, items, bank=bank)
    assert [r["answer_nll"] for r in shifted] != pytest.approx([r["answer_nll"] for r in own], rel=1e-4)


def test_no_update_is_gamma_zero_and_prompts_differ(run):
    learner, items, bank = run
    a = harness.run_method("no_update", learner, items)
    b = harness.run_method("regrad", learner, items, bank=bank, gamma=0.0)
    assert [r["generated"] for r in a] == [r["generated"] for r in b]
    assert a[0]["passage_ids"] == [] and b[0]["passage_ids"] == list(items[0].passage_ids)
    closed, rag = (harness.run_method(m, learner, items) for m in ("closed_book", "rag"))
    assert [r["answer_nll"] for r in closed] != pytest.approx([r["answer_nll"] for r in rag], rel=1e-4)


def test_errors(run):
    learner, items, _ = run
    with pytest.raises(ValueError, match="Unknown method.*choose from"):
        harness.run_method("regard", learner, items)
    with pytest.raises(ValueError, match="Gradient Bank"):
        harness.run_method("regrad", learner, items)
    with pytest.raises(FileNotFoundError, match="written by 02_augment"):
        evaluate.load_tasks("hotpotqa", "dev")


def test_evaluate_writes_resumes_and_overwrites(tiny_model_dir):
    run = "evaltest-resume"                    # its own: the module's run holds other tests' results in any order
    learner, items, _ = make_run(run, DATASET)
    methods = ["closed_book", "regrad", "shift", "no_update"]
    out = evaluate.evaluate(run, DATASET, methods, limit=5, learner=learner)
    assert {m: r["status"] for m, r in out.items()} == dict.fromkeys(methods, "computed")
    predictions, metrics_file = results.method_files(run, DATASET, "regrad")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 5 and set(rows[0]) >= {"test_id", "question", "answers", "prediction", "passage_ids",
                                                "answer_nll"}
    saved = artifacts.read_json(metrics_file)
    assert saved["n"] == 5 and saved["gamma"] == 1.0 and saved["topk"] == 3
    assert saved["provenance"]["config"]["preset"]["name"] == "tiny"
    assert saved["nll"] == pytest.approx(sum(r["answer_nll"] for r in rows) / 5)
    summary_file = paths.results_dir(run) / "summary.csv"
    lines = summary_file.read_text().splitlines()
    assert lines[0] == "dataset,method,em,acc,f1,precision,recall,nll,n" and len(lines) == 5

    before = metrics_file.stat().st_mtime_ns
    again = evaluate.evaluate(run, DATASET, ["regrad", "rag"], limit=5, learner=lambda: learner)
    assert again["regrad"]["status"] == "kept" and again["rag"]["status"] == "computed"
    assert metrics_file.stat().st_mtime_ns == before
    assert {r["method"] for r in result_files.summary_rows(run)} == {*methods, "rag"}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        evaluate.evaluate(run, DATASET, ["regrad"], limit=5, gamma=2.0, learner=learner)
    redone = evaluate.evaluate(run, DATASET, ["regrad"], limit=5, gamma=2.0, learner=learner, overwrite=True)
    assert redone["regrad"]["status"] == "computed" and artifacts.read_json(metrics_file)["gamma"] == 2.0
    assert len(summary_file.read_text().splitlines()) == 6   # updated in place, not appended


def test_sweep(run):
    learner, _, _ = run
    rows = sweeps.sweep(RUN, DATASET, gammas=(0.0, 1.0), limit=4, learner=learner)
    assert [(r["gamma"], r["topk"], r["n"]) for r in rows] == [(0.0, 3, 4), (1.0, 3, 4)]
    text = (paths.results_dir(RUN) / "sweeps.csv").read_text().splitlines()
    assert text[0] == "dataset,method,gamma,topk,mixed,scheme,em,acc,f1,precision,recall,nll,n"
    assert all(line.split(",")[4:6] == ["0.0", reader.DEFAULT_SCHEME] for line in text[1:])
    # gamma 0 is the meta-trained LoRA without update
    plain = results.score_rows(harness.run_method("no_update", learner, evaluate.load_tasks(DATASET, limit=4)))
    assert rows[0]["nll"] == pytest.approx(plain["nll"], abs=1e-4)
    # each computed point keeps its per-question predictions (what the reference comparison pairs)
    for row in rows:
        file = paths.sweep_predictions_file(RUN, DATASET, "regrad", row["gamma"], 3, reader.DEFAULT_SCHEME)
        assert file.name == f"regrad.gamma-{row['gamma']:g}.topk-3.{reader.DEFAULT_SCHEME}.predictions.jsonl"
        saved = [json.loads(line) for line in file.read_text().splitlines()]
        scores = results.score_rows(saved)
        assert [r["test_id"] for r in saved] == [t.test_id for t in evaluate.load_tasks(DATASET, limit=4)]
        assert (scores["em"], scores["n"]) == (row["em"], row["n"]) and scores["nll"] == pytest.approx(row["nll"],
                                                                                                    abs=1e-4)
        assert all(r["min_margin"] > 0 for r in saved)
    assert sweeps.sweep(RUN, DATASET, gammas=(0.0, 1.0), limit=4, learner=lambda: pytest.fail("reloaded")) == rows
    assert sweeps.sweep_all(RUN, [DATASET], gammas=[]) == []


def test_settings_and_examples(run):
    with pytest.raises(ValueError, match="Unknown method"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["closed-book"])
    with pytest.raises(FileNotFoundError, match="written by 03_train"):
        evaluate.EvaluateSettings(run="no-such-run", datasets=[DATASET], methods=["closed_book"])
    with pytest.raises(FileNotFoundError, match="written by 04_encode"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], topk=2)
    with pytest.raises(FileNotFoundError, match=r"dev_all/int2 .*04_encode.*schemes \['"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["closed_book"], frontier_schemes=["int2"])
    with pytest.raises(ValueError, match="int3"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="int3")
    settings = evaluate.EvaluateSettings(run=RUN, datasets=DATASET, methods=["closed_book", "regrad"])
    assert settings.datasets == [DATASET] and settings.sweep_datasets == [DATASET]     # None: every dataset
    only = evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], sweep_datasets=["probe"])
    assert only.sweep_datasets == []        # the sweep covers the evaluated datasets among sweep_datasets
    evaluate.evaluate(RUN, DATASET, ["closed_book", "regrad"], limit=5, learner=run[0], overwrite=True)
    rows = results.examples(RUN, DATASET, ["closed_book", "regrad"], n=2)
    assert [set(r) for r in rows] == [{"question", "gold", "closed_book", "regrad"}] * 2


def test_an_explicit_bank_is_checked_against_the_learner(run):
    """Unchecked, another run's bank was accepted and another LoRA layout's gave a raw RuntimeError about sizes."""
    learner, items, own = run
    other = Learner.create(config.load_preset("tiny"), "cpu", seed=7)          # same layout, other meta weights
    foreign = reader.GradientBank.open(encode.encode("evaltest-other", DATASET, "dev", scheme="fp32", learner=other,
                                                   overwrite=True))
    narrow = Learner.create(config.load_preset("tiny", {"peft": {"r": 2}}), "cpu")   # another LoRA layout
    wrong_layout = reader.GradientBank.open(encode.encode("evaltest-r2", DATASET, "dev", scheme="fp32", learner=narrow,
                                                        overwrite=True))
    for store, field in ((foreign, "meta_hash"), (wrong_layout, "layout_hash")):
        with pytest.raises(on_disk.BankMismatchError, match=field):
            evaluate.evaluate(RUN, DATASET, ["regrad"], limit=2, learner=learner, bank=store, overwrite=True)
        with pytest.raises(on_disk.BankMismatchError, match=field):
            harness.run_method("shift", learner, items, bank=store)
    with pytest.raises(TypeError, match="GradientBank"):
        harness.run_method("regrad", learner, items, bank={"p0": None})
    out = evaluate.evaluate(RUN, DATASET, ["regrad"], limit=2, learner=learner, bank=own, overwrite=True)
    assert out["regrad"]["scheme"] == "fp32"


def test_a_damaged_bank_is_refused_by_evaluate(run):
    learner, items, _ = run
    folder = paths.bank_dir(3, RUN, DATASET, "dev", "int8")
    shard = sorted(folder.glob("shard-*.safetensors"))[0]
    original = shard.read_bytes()
    data = bytearray(original)
    data[len(data) // 2:len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 16])
    try:
        shard.write_bytes(bytes(data))
        with pytest.raises(on_disk.BankError):
            evaluate.evaluate(RUN, DATASET, ["regrad"], learner=learner, scheme="int8", overwrite=True)
    finally:
        shard.write_bytes(original)
    manifest = folder / "manifest.json"
    text = manifest.read_text()
    try:
        manifest.write_text("[]")
        with pytest.raises(on_disk.BankFormatError, match="manifest.json"):
            evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["regrad"], scheme="int8")
    finally:
        manifest.write_text(text)


def test_quantised_banks_answer_like_fp32(run):
    """int8 / int4 banks change the answer NLL by a small share of the update's own effect; int8 keeps the answers.

    Tolerance, per scheme, from first order: the update is ``gamma·alpha ⊙ Σ g``, so a stored gradient with relative
    error ``r = |ĝ - g| / |g|`` moves the answer NLL by about ``r`` times the update's own effect when the error is
    aligned with the NLL's gradient, and by less when it is not. So mean |Δ NLL to fp32| ≤ 2·r·|mean(regrad -
    no_update)| (the factor 2 for curvature: this fixture takes a deliberately large step, alpha = 0.5). Here r is
    ≈ 0.8 % (int8) and ≈ 14 % (int4, 4.25 bits on random-model gradients). The target (< 10 % of the effect)
    is checked on the trained demo run by bench/bank_schemes.py (measured 0.4–0.6 % for int4, BENCHMARKS.md).
    Answers are compared for int8 only: this random tiny model's 20-token greedy continuations choose between
    near-equal logits, so int4's perturbation flips some of them (as any perturbation of that size would).
    """
    learner, items, fp32 = run
    plain = [r["answer_nll"] for r in harness.run_method("no_update", learner, items)]
    ref = harness.run_method("regrad", learner, items, bank=fp32)
    effect = abs(sum(r["answer_nll"] - p for r, p in zip(ref, plain)) / len(ref))
    assert effect > 1e-2
    exact = fp32.rows(fp32.ids())
    for scheme in ("int8", "int4"):
        store = reader.open_bank(3, RUN, DATASET, "dev", scheme)
        r = float(((store.rows(fp32.ids()) - exact).norm(dim=1) / exact.norm(dim=1)).max())
        rows = harness.run_method("regrad", learner, items, bank=store)
        if scheme == "int8":
            assert [row["prediction"] for row in rows] == [row["prediction"] for row in ref]
        change = sum(abs(a["answer_nll"] - b["answer_nll"]) for a, b in zip(rows, ref)) / len(ref)
        assert 0 < change <= 2 * r * effect, (scheme, change, r, effect)


def test_named_evaluation_goes_beside_the_finished_results(run):
    learner = run[0]
    evaluate.evaluate(RUN, DATASET, ["regrad"], limit=5, learner=learner, overwrite=True)
    main = results.method_files(RUN, DATASET, "regrad")[1]
    before = main.read_bytes()
    with pytest.raises(FileExistsError, match=r"overwrite=True .* or name this evaluation \(evaluation='...'\)"):
        evaluate.evaluate(RUN, DATASET, ["regrad"], limit=4, gamma=0.5, learner=learner)
    out = evaluate.evaluate(RUN, DATASET, ["regrad", "closed_book"], limit=4, gamma=0.5, learner=learner,
                            evaluation="first4")
    folder = paths.results_dir(RUN) / "evaluations" / "first4"
    assert paths.results_dir(RUN, "first4") == folder
    assert results.method_files(RUN, DATASET, "regrad", "first4")[1] == folder / DATASET / "regrad.metrics.json"
    assert out["regrad"]["n"] == 4 and artifacts.read_json(folder / DATASET / "regrad.metrics.json")["gamma"] == 0.5
    assert main.read_bytes() == before                                   # the finished results are untouched
    assert {r["method"] for r in result_files.summary_rows(RUN, "first4")} == {"regrad", "closed_book"}
    assert all(r["n"] == 4 for r in result_files.summary_rows(RUN, "first4"))
    assert len(results.examples(RUN, DATASET, ["closed_book", "regrad"], n=2, evaluation="first4")) == 2
    rows = sweeps.sweep(RUN, DATASET, gammas=(0.0,), limit=4, learner=learner, evaluation="first4")
    assert (folder / "sweeps.csv").is_file() and rows[0]["n"] == 4
    with pytest.raises(ValueError,
                       match=r"evaluation = '\.\./x' is not a plain folder name \(it holds a path separator"):
        evaluate.EvaluateSettings(run=RUN, datasets=[DATASET], methods=["closed_book"], evaluation="../x")
