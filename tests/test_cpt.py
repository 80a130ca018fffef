"""Continual post-training (methods cpt, cpt_rag) and the drift measures, on the tiny model: the stream's order, the
loss it lowers, the drift figures against a hand computation, ReGrad's persistent weights bit for bit, and what each
cpt_config.json key changes. (Resume after a kill: tests/test_faults.py.)"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from regrad_lib import config, testing
from regrad_lib.answering import harness
from regrad_lib.answering.specs import SPECS
from regrad_lib.bank import encode
from regrad_lib.core import generation, lora, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.cpt import continual, drift, replay
from regrad_lib.data import metrics, prompts
from regrad_lib.evaluation import evaluate
from regrad_lib.io import artifacts, paths, result_files, tensorfile
from regrad_lib.training import train_data

RUN, DATASET, GENERAL = "cpt-run", "cptqa", "cptgen"
CFG = {"chunks": 3, "batch_size": 2, "learning_rate": 1e-2, "epochs_per_chunk": 2, "general_passages": 6,
       "general_questions": 3}
CORPUS_LINES = 40
# training's passage budget differs from the bank's (64): what CPT and drift measure must be cut as the bank cuts
LEARNER = {"max_context_len": 32}


def _records(n: int) -> list[dict]:
    """n questions of 3 passages: two of their own and one shared by all (injected once, in chunk 1)."""
    return [{"test_id": i, "question": f"Which river flows through city {i}?", "answers": [f"river {i}"],
             "passages": [f"City {i} lies on the river {i} in the north.", f"River {i} is long and wide.",
                          "Rivers flow to the sea."], "passage_ids": [f"{i}a", f"{i}b", "shared"],
             "titles": [f"City {i}", f"River {i}", "Rivers"], "scores": [3.0, 2.0, 1.0]} for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def work(tmp_path_factory, tiny_model_dir):
    """A work root of this module's own, with the tiny model linked in. The general set's held-out passages are the
    corpus passages no augmented file under the work root retrieves (drift.augmented_passage_ids, every dataset):
    in a shared root, another module's augmented file of sample-corpus passages (tests/test_distributed.py's
    dist-c) would leave this module's corpus none."""
    root = tmp_path_factory.mktemp("cpt")
    (root / "models").mkdir()
    (root / "models" / tiny_model_dir.name).symlink_to(tiny_model_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REGRAD_WORK", str(root))
        yield root


@pytest.fixture(scope="module")
def study(work):
    """A saved tiny run with CFG, a 6-question dev set with its bank, a corpus, and general-question candidates of
    which the base model answers every other one exactly (their gold set to its own closed-book answer)."""
    preset = config.load_preset("tiny", {"cpt": CFG, "learner": LEARNER})
    testing.saved_trained_run(RUN, preset, seed=2)
    records = _records(6)
    lines = paths.sample_corpus().read_text(encoding="utf-8").splitlines(keepends=True)[:CORPUS_LINES + 1]
    records[1]["passage_ids"][0] = lines[2].split("\t")[0]       # a corpus passage the dev set retrieves
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), records)
    corpus = paths.work_root() / "cpt-corpus.tsv"
    corpus.write_text("".join(lines), encoding="utf-8")
    learner = Learner.from_run(RUN)
    candidates = [{"test_id": 100 + i, "question": f"What is the name of thing number {i}?", "answers": ["x"],
                   "passages": [f"Thing {i} has a name.", "Things have names.", "Names are words."],
                   "passage_ids": [f"g{i}", "g-a", "g-b"], "titles": ["", "", ""], "scores": [3.0, 2.0, 1.0]}
                  for i in range(10)]      # passages (ids no corpus holds): a run may meta-train on these rows
    asked = drift.answer(learner, [task_batches.from_record(r, 0) for r in candidates], SPECS["closed_book"])
    for i, (record, row) in enumerate(zip(candidates, asked)):
        record["answers"] = [row["prediction"]] if i % 2 == 0 else ["no such answer at all"]
    artifacts.write_json(paths.augmented_file(GENERAL, "train_all"), candidates)
    encode.encode(RUN, DATASET, "dev")
    return {"learner": learner, "items": evaluate.load_tasks(DATASET), "corpus": str(corpus), "candidates": candidates,
            "dev_corpus_id": records[1]["passage_ids"][0]}


def _evaluate(study, methods, **kwargs):
    return evaluate.evaluate(RUN, DATASET, methods, learner=study["learner"], general_corpus=study["corpus"],
                             general_datasets=[GENERAL], **kwargs)


def _general(study, **cfg):
    learner = study["learner"]
    learner = dataclasses.replace(learner, preset=learner.preset.replace(cpt={**CFG, **cfg}))
    return learner, drift.general_set(RUN, learner, corpus_path=study["corpus"], datasets=[GENERAL],
                                      evaluation="g" + "".join(f"-{k}{v}" for k, v in sorted(cfg.items())))


def _post(study, name: str, measure_at: str = "every", **cfg):
    learner, general = _general(study)
    learner = dataclasses.replace(learner, preset=learner.preset.replace(cpt={**CFG, **cfg}))
    return continual.post_train(RUN, DATASET, learner, study["items"], cfg=learner.preset.cpt, general=general,
                                evaluation=name, measure_at=measure_at), learner, general


# --- the stream ------------------------------------------------------------------------------------------------

def test_the_stream_cuts_the_questions_in_evaluation_order_and_injects_each_bank_passage_once(study):
    plan = continual.stream(study["items"], 3)
    assert [[t.test_id for t in b] for b in plan.blocks] == [[0, 1], [2, 3], [4, 5]]
    ids = [[p[0] for p in c] for c in plan.chunks]
    assert ids[0] == ["0a", "0b", "shared", study["dev_corpus_id"], "1b"] and ids[1] == ["2a", "2b", "3a", "3b"]
    bank = [p.pid for p in encode.passages(DATASET, "dev", 3)]        # the passages the Gradient Bank holds
    assert [i for c in ids for i in c] == bank
    assert plan.chunks[0][0] == ("0a", "City 0", "City 0 lies on the river 0 in the north.")
    with pytest.raises(ValueError, match="cpt chunks = 7 but only 6 questions"):
        continual.stream(study["items"], 7)


def test_chunks_are_trained_one_after_another_in_stream_order(study, monkeypatch):
    seen, real = [], continual.train_chunk
    monkeypatch.setattr(continual, "train_chunk",
                        lambda *a, **k: seen.append((a[6], [p[0] for p in a[3]])) or real(*a, **k))
    budgets, batch = [], task_batches.passage_batch        # every passage CPT trains on or measures: the bank's cut
    monkeypatch.setattr(task_batches, "passage_batch", lambda tok, items, max_len, *a, **k: budgets.append(max_len)
                        or batch(tok, items, max_len, *a, **k))
    post, _, _ = _post(study, "order")
    bank = study["learner"].preset.learner.bank_context_len
    assert budgets and set(budgets) == {bank} != {LEARNER["max_context_len"]}
    plan = continual.stream(study["items"], 3)
    assert seen == [(c + 1, [p[0] for p in chunk]) for c, chunk in enumerate(plan.chunks)]
    # steps: every chunk, epochs_per_chunk passes of ceil(len / batch_size) batches
    assert [r["steps"] for r in post.drift] == [0, 6, 10, 14]
    assert [r["documents"] for r in post.drift] == [0, 5, 9, 13]
    assert [r["questions"] for r in post.drift] == [0, 2, 4, 6]


def test_cpt_lowers_the_loss_of_the_injected_passages(study):
    post, learner, _ = _post(study, "lowers")
    injected = [p for c in post.stream.chunks for p in c]
    before = drift.text_nll(dataclasses.replace(learner, phi=drift.zero_phi(learner.phi)), injected)
    after = drift.text_nll(post.learner, injected)
    assert sum(after) / len(after) < sum(before) / len(before) - 0.05
    assert sum(a < b for a, b in zip(after, before)) >= len(injected) - 1
    assert all(not t.requires_grad for t in post.learner.phi.values())


# --- the drift figures against a hand computation ------------------------------------------------------------

def _merged(learner: Learner) -> torch.nn.Module:
    """A copy of the base model with every LoRA merged into its weight (W + s·B·A) and switched off."""
    model = copy.deepcopy(learner.model)
    with torch.no_grad():
        for name, m in lora.modules(model).items():
            m.base.weight += m.scaling * learner.phi[f"{name}.lora_B"].detach() @ learner.phi[f"{name}.lora_A"].detach()
            m.enabled = False
    return model


def _hand_nll(model, tokenizer, title: str, text: str, cfg) -> float:
    title, text = title.strip(), text.strip()
    words = f"{title}: {text}" if cfg.passage_format == "title_text" and title else text
    ids = tokenizer(words, add_special_tokens=True)["input_ids"]
    ids = (prompts.document_start(tokenizer) + ids)[:cfg.bank_context_len]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1]
    return float(F.cross_entropy(logits, x[0, 1:]))


def test_drift_figures_equal_a_hand_computation(study):
    post, learner, general = _post(study, "hand")
    last = post.drift[-1]
    merged = _merged(post.learner)
    base = [p for n, p in learner.model.named_parameters() if "lora_" not in n]
    theta = math.sqrt(sum(float(p.double().pow(2).sum()) for p in base))
    moved = [p.double() - p0.double() for (n, p), p0 in zip(((n, p) for n, p in merged.named_parameters()
                                                             if "lora_" not in n), base)]
    delta = math.sqrt(sum(float(d.pow(2).sum()) for d in moved))
    assert general.theta_norm == pytest.approx(theta, rel=1e-12)
    assert last["delta_norm"] == pytest.approx(delta, rel=1e-6) and delta > 0
    assert last["delta_rel"] == pytest.approx(delta / theta, rel=1e-6)
    assert last["delta_from_base"] == pytest.approx(delta, rel=1e-6)          # lora: the stream starts at the base
    cfg = learner.preset.learner
    hand = [_hand_nll(merged, learner.tokenizer, t, x, cfg) for _, t, x in general.passages]
    assert last["general_text_nlls"] == pytest.approx(hand, abs=2e-5)
    assert last["general_text_nll"] == pytest.approx(sum(hand) / len(hand), abs=2e-5)
    # general questions and knowledge: the merged model's own greedy answers and gold NLLs, one by one
    def answered(items):
        out = []
        for t in items:
            ids = prompts.build_prompt(learner.tokenizer, t.question, None, cfg).ids
            gen = generation.generate(merged, learner.tokenizer, [ids],
                                      max_new_tokens=learner.preset.generation.max_new_tokens,
                                      score_ids=[prompts.answer_ids(learner.tokenizer, t.answer)],
                                      share_prefix=False)[0]
            out.append((metrics.score(gen.answer, list(t.answers))["em"], gen.answer_nll))
        return out
    asked = answered(general.questions)
    assert general.questions and last["general_correct"] == [em for em, _ in asked]
    assert last["general_answer_nlls"] == pytest.approx([n for _, n in asked], abs=1e-4)
    known = answered(study["items"])
    assert last["knowledge_em"] == pytest.approx(100 * sum(em for em, _ in known) / len(known))
    assert last["knowledge_nll"] == pytest.approx(sum(n for _, n in known) / len(known), abs=1e-4)
    assert last["first_block_em"] == pytest.approx(100 * sum(em for em, _ in known[:2]) / 2)
    assert [r["prediction"] for r in post.rows] == [r["prediction"] for r in
                                                    harness.run_method("cpt", post.learner, study["items"])]


# --- the methods in the harness, ReGrad's persistent weights ---------------------------------------------------

def _persistent(learner: Learner) -> dict[str, torch.Tensor]:
    return {**{k: v.clone() for k, v in learner.model.state_dict().items()},
            **{f"alpha.{k}": v.detach().clone() for k, v in learner.alpha.values.items()}}


def test_regrad_leaves_the_persistent_weights_bit_for_bit_and_cpt_answers_beside_it(study):
    learner = study["learner"]
    before = _persistent(learner)
    out = _evaluate(study, ["regrad", "shift", "rag", "cpt", "cpt_rag"], evaluation="methods")
    after = _persistent(learner)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for method in ("regrad", "shift"):
        assert out[method]["persistent_unchanged"] is True
        assert out[method]["persistent_sha256"] == drift.fingerprint(learner)
    assert "persistent_unchanged" not in out["rag"]
    trained = {k: CFG[k] for k in continual.TRAINED_KEYS if k in CFG}
    assert out["cpt"]["cpt"] == {**trained, "weights": "lora", "objective": "raw", "seed": 42}
    rows = {m: result_files.method_predictions(RUN, DATASET, m, "methods") for m in ("cpt", "cpt_rag", "rag")}
    assert [r["passage_ids"] for r in rows["cpt"]] == [[] for _ in rows["cpt"]]
    assert [r["passage_ids"] for r in rows["cpt_rag"]] == [r["passage_ids"] for r in rows["rag"]]
    # kept on a re-run with the same settings; other cpt settings are refused, as for any method
    assert _evaluate(study, ["cpt", "cpt_rag"], evaluation="methods")["cpt"]["status"] == "kept"
    for stale in ({"learning_rate": 0.5}, {"seed": 7}, {"objective": "replay"}):
        with pytest.raises(FileExistsError, match="was computed with"):
            _evaluate(study, ["cpt"], evaluation="methods", cpt=stale)


def test_a_damaged_cpt_checkpoint_is_never_served(study):
    """One flipped exponent bit in a trained weight of a finished stream changed cpt_rag's answers, with no error;
    now 05_evaluate refuses it, naming the file, and leaves it as it is (tests/test_cpt_checkpoint.py: each way)."""
    _evaluate(study, ["cpt"], evaluation="damaged")
    path = paths.cpt_dir(RUN, DATASET, "damaged") / continual.CHECKPOINT / continual.TENSORS
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    entries = json.loads(raw[8:8 + header])
    first = min((k for k in entries if k.startswith("w.")), key=lambda k: entries[k]["data_offsets"][0])
    raw[8 + header + entries[first]["data_offsets"][0] + 3] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(tensorfile.IntegrityError, match=r"cpt/checkpoint/state.safetensors: its tensors do not match "
                                                        r"their checksum"):
        _evaluate(study, ["cpt_rag"], evaluation="damaged")
    assert path.read_bytes() == bytes(raw)
    assert not (paths.results_dir(RUN, "damaged") / DATASET / "cpt_rag.predictions.jsonl").exists()


def test_the_fingerprint_changes_with_any_one_persistent_tensor_alone(tiny_model_dir):
    """One step size, one LoRA value, one base weight: each changed alone changes the fingerprint; changed back,
    the fingerprint is the start's (the function is compared with its own earlier value, never with itself)."""
    learner = Learner.create(config.load_preset("tiny"))
    start = drift.fingerprint(learner)
    tensors = {"alpha": next(iter(learner.alpha.values.values())), "phi": next(iter(learner.phi.values())),
               "base": learner.model.get_input_embeddings().weight}
    seen = {start}
    for name, t in tensors.items():
        with torch.no_grad():
            t.view(-1)[0] += 1e-3
        seen.add(drift.fingerprint(learner))
        with torch.no_grad():
            t.view(-1)[0] -= 1e-3
        assert drift.fingerprint(learner) == start, name
    assert len(seen) == 1 + len(tensors)


def test_a_method_that_changes_the_persistent_weights_is_refused(study, monkeypatch):
    real = harness.run_method

    def leaky(method, learner, *args, **kwargs):
        rows = real(method, learner, *args, **kwargs)
        with torch.no_grad():
            next(iter(learner.phi.values())).add_(1e-3)      # a per-question update that was not reverted
        return rows

    monkeypatch.setattr(evaluate, "run_method", leaky)
    learner = Learner.from_run(RUN)
    with pytest.raises(RuntimeError, match="regrad changed the persistent weights"):
        evaluate.evaluate(RUN, DATASET, ["regrad", "cpt"], learner=learner, general_corpus=study["corpus"],
                          general_datasets=[GENERAL], evaluation="leaky")


# --- the general set -----------------------------------------------------------------------------------------

def test_the_general_set_is_held_out_text_of_distinct_articles_and_training_questions_in_file_order(study):
    learner, general = _general(study)
    ids = [p[0] for p in general.passages]
    rows = [line.split("\t") for line in open(study["corpus"], encoding="utf-8").read().splitlines()[1:]]
    kept = [(i, title) for i, _, title in rows if i != study["dev_corpus_id"]]
    firsts, later, seen = [], [], {}
    for i, title in kept:                     # by hand: each article's first passage, then second ones, ...
        seen[title] = seen.get(title, 0) + 1
        (firsts if seen[title] == 1 else later).append((seen[title], len(later), i))
    expected = [i for _, _, i in firsts] + [i for _, _, i in sorted(later)]
    assert ids == expected[:CFG["general_passages"]] and CFG["general_passages"] < len(firsts) < len(kept)
    assert len({p[1] for p in general.passages}) == CFG["general_passages"] == general.selection["articles"]
    assert general.articles == [p[1] for p in general.passages]
    assert study["dev_corpus_id"] not in ids                                    # the retrieved one was skipped
    # the first questions in file order, whatever the base model answers (never selected on its success)
    assert [q.extra["test_id"] for q in general.questions] == [100, 101, 102]
    assert general.selection["per_dataset"] == {GENERAL: 3}
    assert 0 < general.points["base"]["general_acc"] < 100 and general.points["base"]["delta_from_base"] == 0.0
    assert general.points["base"]["general_accurate"] == [1.0, 0.0, 1.0]        # every other one is answered
    assert general.points["meta"]["delta_from_base"] > 0
    assert general.lora_norm == pytest.approx(math.sqrt(sum(float(m.base.weight.double().pow(2).sum())
                                                            for m in lora.modules(learner.model).values())))
    with pytest.raises(ValueError, match="include held-out general passages"):
        drift.check_disjoint(general, [("zz", "", general.passages[2][2])], "text", "planted")
    # more passages than articles: every article's first passage, then the second ones in file order
    _, more = _general(study, general_questions=2, general_passages=len(firsts) + 2)
    assert len(more.questions) == 2 and [p[0] for p in more.passages] == expected[:len(firsts) + 2]
    assert more.selection["articles"] == len(firsts)


def test_general_questions_take_the_datasets_in_turn_and_leave_meta_training_out(study):
    other = [{**c, "test_id": 200 + i, "question": f"Other question {i}?"}
             for i, c in enumerate(study["candidates"][:2])]
    artifacts.write_json(paths.augmented_file("cptgen2", "train_all"), other)
    chosen, per = drift.general_questions([GENERAL, "cptgen2"], {GENERAL: "train_all", "cptgen2": "train_all"},
                                          {(GENERAL, 101)}, 6)
    assert [(q.extra["dataset"], q.extra["test_id"]) for q in chosen] == [
        (GENERAL, 100), ("cptgen2", 200), (GENERAL, 102), ("cptgen2", 201), (GENERAL, 103), (GENERAL, 104)]
    assert [q.test_id for q in chosen] == list(range(6)) and per == {GENERAL: 4, "cptgen2": 2}


def test_the_general_set_leaves_out_the_questions_the_run_was_meta_trained_on(study):
    """A run whose train_request.json names the general dataset: the general questions are the first ones in file
    order that meta-training neither stepped on nor validated on (whether the base model answers them plays no
    part)."""
    run = "cpt-run-trained"
    preset = config.load_preset("tiny", {"cpt": CFG, "learner": LEARNER, "train": {
        "validation_size": 2, "meta_batch_size": 2, "tasks_per_forward": 2}})
    testing.saved_trained_run(run, preset, seed=2)
    artifacts.write_json(paths.train_request_file(run), {"train_datasets": [GENERAL], "train_file": "train_all"})
    artifacts.write_json(paths.train_summary_file(run), {"run": run, "steps": 1})
    excluded = drift.meta_trained(run)                    # 2 validated + 2 stepped (test_the_questions_left_out_...)
    assert len(excluded) == 4 and {d for d, _ in excluded} == {GENERAL}
    in_order = [c["test_id"] for c in study["candidates"]]                          # the training file's order
    assert any((GENERAL, k) in excluded for k in in_order[:CFG["general_questions"]])  # the exclusion matters
    general = drift.general_set(run, Learner.from_run(run), corpus_path=study["corpus"], datasets=[GENERAL])
    kept = [k for k in in_order if (GENERAL, k) not in excluded]
    assert [q.extra["test_id"] for q in general.questions] == kept[:CFG["general_questions"]]
    assert general.selection["meta_trained_left_out"] == 4


def test_cpt_keys_shape_the_stream(study):
    lr = {}
    for name, cfg in {"base": {}, "lr": {"learning_rate": 1e-3}, "epochs": {"epochs_per_chunk": 1},
                      "chunks": {"chunks": 2}, "batch": {"batch_size": 4}}.items():
        post, _, _ = _post(study, f"keys-{name}", **cfg)
        lr[name] = post
    assert [r["steps"] for r in lr["base"].drift] == [0, 6, 10, 14]
    assert [r["steps"] for r in lr["epochs"].drift] == [0, 3, 5, 7]                   # epochs_per_chunk 1
    assert [r["steps"] for r in lr["batch"].drift] == [0, 4, 6, 8]                    # batch_size 4
    assert [r["chunk"] for r in lr["chunks"].drift] == [0, 1, 2]                      # chunks 2
    assert [r["documents"] for r in lr["chunks"].drift] == [0, 7, 13]
    state = artifacts.read_json(paths.cpt_dir(RUN, DATASET, "keys-lr") / continual.CHECKPOINT / continual.STATE)
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    assert 0 < lr["lr"].drift[-1]["delta_norm"] < lr["base"].drift[-1]["delta_norm"]


def _lora_change(model, now, start) -> float:
    """‖Σ s·(B A − B₀ A₀)‖ over the LoRA modules, in float64 (start None: from zero, i.e. the base model)."""
    total = 0.0
    for name, m in lora.modules(model).items():
        merged = now[f"{name}.lora_B"].detach().double() @ now[f"{name}.lora_A"].detach().double()
        if start is not None:
            merged = merged - start[f"{name}.lora_B"].double() @ start[f"{name}.lora_A"].double()
        total += float((m.scaling * merged).pow(2).sum())
    return math.sqrt(total)


def test_cpt_weights_choose_what_is_trained(study):
    learner = study["learner"]
    before = _persistent(learner)
    fresh, _, general = _post(study, "w-lora")
    assert fresh.learner.model is learner.model and fresh.drift[0]["delta_from_base"] == 0.0
    fresh_start = lora.fresh(learner.model, learner.preset.peft, learner.preset.train.seed)
    created = Learner.create(learner.preset).phi                   # what 03_train starts from with this seed
    assert fresh_start.keys() == created.keys() and all(torch.equal(fresh_start[n], created[n]) for n in created)
    phi, _, _ = _post(study, "w-phi", weights="phi")
    assert phi.drift[0]["delta_from_base"] == pytest.approx(general.points["meta"]["delta_from_base"], rel=1e-9)
    # the stream starts at the meta-trained LoRA, not at the base: its change over the stream and from the base
    # differ; both by hand (s·B·A of each module, from the start's and from zero)
    last, start = phi.drift[-1], {n: p.detach() for n, p in learner.phi.items()}
    assert phi.drift[0]["delta_norm"] == 0.0
    assert last["delta_norm"] == pytest.approx(_lora_change(learner.model, phi.learner.phi, start), rel=1e-9)
    assert last["delta_from_base"] == pytest.approx(_lora_change(learner.model, phi.learner.phi, None), rel=1e-9)
    assert abs(last["delta_from_base"] - last["delta_norm"]) > 0.1 * last["delta_norm"] > 0
    assert phi.drift[0]["general_text_nll"] == pytest.approx(general.points["meta"]["general_text_nll"], abs=1e-6)
    full, _, _ = _post(study, "w-full", weights="full")
    assert full.learner.model is not learner.model
    assert all(not bool(t.any()) for t in full.learner.phi.values())            # the LoRA adds exactly nothing
    assert full.drift[-1]["delta_norm"] > 0 and full.drift[-1]["delta_norm"] == full.drift[-1]["delta_from_base"]
    after = _persistent(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)                # the run's weights untouched
    half = dataclasses.replace(learner, model=copy.deepcopy(learner.model).to(torch.bfloat16))
    with pytest.raises(ValueError, match="trains every base weight in fp32"):
        continual._trainee(half, config.CptConfig(weights="full"))


def test_the_questions_left_out_of_the_general_set_are_the_ones_meta_training_took(tiny_model_dir, monkeypatch):
    from regrad_lib.training import train

    records = [{"test_id": i, "question": f"Capital of country {i}?", "answers": [f"city {i}"],
                "passages": [f"City {i} is the capital of country {i}.", "A city."], "passage_ids": [f"c{i}", "c"],
                "titles": ["", ""], "scores": [2.0, 1.0]} for i in range(10)]
    artifacts.write_json(paths.augmented_file("cpttrain", "train_all"), records)
    preset = config.load_preset("tiny", {"train": {"max_steps": 5, "meta_batch_size": 2, "tasks_per_forward": 2,
                                                   "validation_size": 2, "topk": 2, "eval_steps": 100,
                                                   "metric_for_best_model": "loss"}})
    taken, real = [], train.meta_step
    monkeypatch.setattr(train, "meta_step", lambda learner, opt, params, batch, lr: taken.extend(
        (t.extra["dataset"], t.test_id) for t in batch) or real(learner, opt, params, batch, lr))
    summary = train.train("cpt-meta", preset, ["cpttrain"])
    assert summary["steps"] == 5 and len(taken) == 10 and len(set(taken)) < 10     # into a second epoch
    tasks = train_data.load_tasks(["cpttrain"], "train_all", 2)
    validation = {("cpttrain", t.test_id) for t in train_data.split_tasks(tasks, 2, 42).validation}
    assert drift.meta_trained("cpt-meta") == set(taken) | validation
    assert drift.training_file("cpt-meta", "cpttrain") == "train_all"


def test_05s_cpt_parameters_are_checked_first_and_reach_the_command_line(study):
    from regrad_lib.runner import launch

    common = dict(run=RUN, datasets=[DATASET], methods=["cpt", "cpt_rag"], general_datasets=[GENERAL],
                  general_corpus=study["corpus"])
    with pytest.raises(config.ConfigError, match="cpt parameters: .*weights = 'adapter' is not allowed"):
        evaluate.EvaluateSettings(**common, cpt_weights="adapter")
    with pytest.raises(FileNotFoundError, match="general_corpus='nope.tsv' not found"):
        evaluate.EvaluateSettings(**{**common, "general_corpus": "nope.tsv"})
    with pytest.raises(FileNotFoundError, match="written by 02_augment"):
        evaluate.EvaluateSettings(**{**common, "general_datasets": ["nosuchqa"]})
    settings = evaluate.EvaluateSettings(**common, cpt_chunks=2, cpt_learning_rate=0.5)
    assert settings.cpt == {"learning_rate": 0.5, "epochs_per_chunk": None, "chunks": 2, "weights": None,
                            "objective": None, "seed": None}
    assert continual.resolve(RUN, settings.cpt) == config.CptConfig(**{**CFG, "chunks": 2, "learning_rate": 0.5})
    name, again, _ = launch.parse_args(["evaluate", *launch.to_argv(settings)])
    assert name == "evaluate" and again.cpt == settings.cpt and again.general_datasets == [GENERAL]


def test_cpt_seed_sets_the_fresh_lora_and_the_shuffle_and_is_recorded(study, monkeypatch):
    batches, real = [], task_batches.passage_batch
    monkeypatch.setattr(task_batches, "passage_batch", lambda tok, chosen, *a, **k:
                        batches.append([c[1] for c in chosen]) or real(tok, chosen, *a, **k))
    runs = {}
    for name, seed in (("seed-run", None), ("seed-42", 42), ("seed-7", 7)):
        batches.clear()
        post, learner, _ = _post(study, name, seed=seed)
        runs[name] = (post, list(batches))
        assert result_files.read_drift(RUN, DATASET, name)["settings"]["cpt"]["seed"] == (42 if seed is None else seed)
    # None is the run's seed (42): the same stream, step for step
    assert runs["seed-run"][1] == runs["seed-42"][1] and runs["seed-run"][0].drift == runs["seed-42"][0].drift
    assert runs["seed-7"][1] != runs["seed-42"][1]                          # another shuffle
    assert sorted(map(tuple, runs["seed-7"][1][:3])) != sorted(map(tuple, runs["seed-42"][1][:3])) or \
        runs["seed-7"][1][0] != runs["seed-42"][1][0]
    init = {s: continual._trainee(learner, config.CptConfig(), s)[0].phi for s in (7, 42)}
    name = next(n for n in init[7] if n.endswith("lora_A"))
    assert not torch.equal(init[7][name], init[42][name])                   # another fresh LoRA
    assert runs["seed-7"][0].drift[-1]["delta_norm"] != runs["seed-42"][0].drift[-1]["delta_norm"]


def test_measuring_at_the_end_only_keeps_the_training_and_the_last_measures(study):
    every, _, general = _post(study, "every")     # its own stream: "order" is counted as it trains in its test
    end, _, _ = _post(study, "end-only", measure_at="end")
    assert [r["chunk"] for r in end.drift] == [0, 1, 2, 3]
    assert [r.get("measured", True) for r in end.drift] == [True, False, False, True]
    assert [r["steps"] for r in end.drift] == [r["steps"] for r in every.drift]
    assert end.drift[-1] == every.drift[-1] and end.rows == every.rows        # the same weights, the same answers
    # the start is the base model's point of the general set, copied (a fresh LoRA adds exactly nothing)
    assert end.drift[0]["general_text_nlls"] == general.points["base"]["general_text_nlls"]
    assert end.drift[0]["start"] == "base"
    with pytest.raises(FileExistsError, match="other settings"):
        _post(study, "end-only")                                            # measured otherwise: refused


@pytest.fixture(scope="module")
def replay_run(study):
    """A tiny run meta-trained by 03_train (5 steps of 2 tasks on 'cptreplay'), with the tasks each step took."""
    from regrad_lib.training import train

    records = [{"test_id": i, "question": f"What is the capital of country {i}?", "answers": [f"city {i}"],
                "passages": [f"City {i} is the capital of country {i}.", "A city."], "passage_ids": [f"r{i}", "r"],
                "titles": ["", ""], "scores": [2.0, 1.0]} for i in range(10)]
    artifacts.write_json(paths.augmented_file("cptreplay", "train_all"), records)
    preset = config.load_preset("tiny", {"train": {"max_steps": 5, "meta_batch_size": 2, "tasks_per_forward": 2,
                                                   "validation_size": 2, "topk": 2, "eval_steps": 100,
                                                   "metric_for_best_model": "loss"}, "cpt": CFG})
    taken, real = [], train.meta_step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "meta_step", lambda learner, opt, params, batch, lr: taken.append(list(batch)) or
                   real(learner, opt, params, batch, lr))
        assert train.train("cpt-replay", preset, ["cptreplay"])["steps"] == 5
    return taken


def test_the_replay_objective_trains_on_exactly_the_qa_examples_meta_training_stepped_on(study, replay_run,
                                                                                           monkeypatch):
    learner = Learner.from_run("cpt-replay")
    learner = dataclasses.replace(learner, preset=learner.preset.replace(cpt={**CFG, "objective": "replay"}))
    general = drift.general_set("cpt-replay", learner, corpus_path=study["corpus"], datasets=[GENERAL])
    given, real = [], continual.train_step
    monkeypatch.setattr(continual, "train_step", lambda trainee, params, opt, batch, qa=None:
                        given.append(qa) or real(trainee, params, opt, batch, qa))
    post = continual.post_train("cpt-replay", DATASET, learner, study["items"], cfg=learner.preset.cpt,
                                general=general, evaluation="replay")
    stepped = [t for batch in replay_run for t in batch]           # what 03_train's meta steps took, in order
    assert len(stepped) == 10 == 5 * 2                              # its steps × its meta batch: its number of examples
    # the record: every replayed example by (dataset, test_id), in order, is meta-training's
    saved = result_files.read_drift("cpt-replay", DATASET, "replay")
    assert saved["replayed"] == [[t.extra["dataset"], t.test_id] for t in stepped]
    assert saved["settings"]["cpt"]["objective"] == "replay" and saved["settings"]["replay"] is not None
    # dealt out in order over the stream's 14 steps: step s trains examples ⌊10s/14⌋ .. ⌊10(s+1)/14⌋
    assert len(given) == 14 and [0 if q is None else len(q) for q in given] == \
        [(s + 1) * 10 // 14 - s * 10 // 14 for s in range(14)]
    # what was trained: meta-training's answer frame token for token (its prompt, question only as blind_context
    # says, the label ' <answer>' + end-of-turn), the same rows as the fine-tuned baselines' examples
    cfg = learner.preset.learner
    want = task_batches.qa_examples(learner.tokenizer, stepped, cfg, with_context=not cfg.blind_context, stage="eval")
    got = [(row[m.bool()].tolist(), lab[m.bool()].tolist()) for q in given if q is not None
           for row, m, lab in zip(q.input_ids, q.attention_mask, q.labels)]
    assert got == [(list(e.input_ids), list(e.labels)) for e in want]
    label = [t for t in got[0][1] if t != -100]
    assert label == prompts.answer_ids(learner.tokenizer, stepped[0].answer)
    assert all(q is None or "City" not in learner.tokenizer.decode(q.input_ids[0]) for q in given)   # no passages
    # the raw objective trains on the passages alone: other weights
    raw = dataclasses.replace(learner, preset=learner.preset.replace(cpt={**CFG, "objective": "raw"}))
    other = continual.post_train("cpt-replay", DATASET, raw, study["items"], cfg=raw.preset.cpt, general=general,
                                 evaluation="raw")
    assert result_files.read_drift("cpt-replay", DATASET, "raw")["replayed"] == []
    assert other.drift[-1]["delta_norm"] != post.drift[-1]["delta_norm"]
    with pytest.raises(FileNotFoundError, match="replays the QA examples a finished 03_train stepped on"):
        replay.replay_tasks(RUN)                                 # a run 03_train did not make
