"""04_encode end to end on the tiny model: batched per-passage gradients into the bank, resume, refusals."""

import csv
import itertools

import pytest
import torch

from regrad_lib import config
from regrad_lib.bank import encode, on_disk, reader
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import lora, regrad, task_batches
from regrad_lib.core.learner import Learner
from regrad_lib.io import artifacts, paths, tolerance


def _corpus(n):
    with paths.sample_corpus().open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        return [r for r in itertools.islice(rows, n)]


def _records(n_records=5, topk=3):
    """Records whose top-k overlap (passage i+1 and i+2 are shared with the next records)."""
    rows = _corpus(n_records + topk)
    out = []
    for q in range(n_records):
        hits = rows[q:q + topk + 1]   # one more than topk: encode must keep only the top k
        out.append({"test_id": q, "question": f"question {q}?", "answers": [f"answer {q}"],
                    "passages": [h[1] for h in hits], "passage_ids": [h[0] for h in hits],
                    "titles": [h[2] for h in hits], "scores": [1.0] * len(hits)})
    return out


def _make_run(run, seed=0):
    """A 'trained' tiny run: fresh learner with non-zero B (so every tensor has a gradient), saved as 03_train does."""
    preset = config.load_preset("tiny")
    learner = Learner.create(preset)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in learner.phi.items():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    folder = paths.output_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    preset.save(folder)
    learner.save(folder / paths.META_STATE)
    artifacts.write_json(folder / paths.TRAIN_SUMMARY, {"run": run})   # finished, as 03_train marks it
    return Learner.from_run(run)


@pytest.fixture(scope="module")
def learner():
    return _make_run("enc-test")


@pytest.fixture()
def dataset(request):
    name = f"ds-{request.node.name.replace('[', '-').replace(']', '')}"
    artifacts.write_json(paths.augmented_file(name, "dev"), _records())
    return name


def test_passages_are_top_k_and_deduplicated(dataset):
    items = encode.passages(dataset, "dev", topk=3)
    ids = [p.pid for p in items]
    records = _records()
    assert len(ids) == len(set(ids)) == 5 + 3 - 1
    assert ids == list(dict.fromkeys(i for r in records for i in r["passage_ids"][:3]))
    assert [p.pid for p in encode.passages(dataset, "dev", topk=2, start=1, end=3)] == ids[1:4]


def test_round_trip_equals_computed_gradients_in_every_scheme(learner, dataset):
    items = encode.passages(dataset, "dev")
    computed = {pid: vec[i] for ids, vec in encode.gradient_batches(learner, items, 4) for i, pid in enumerate(ids)}
    layout = lora.layout(learner.phi)
    for scheme in ("fp32", "bf16", "int8", "int4"):
        path = encode.encode("enc-test", dataset, "dev", scheme=scheme, batch_size=4, learner=learner, overwrite=True)
        assert path == paths.bank_dir(3, "enc-test", dataset, "dev", scheme)
        b = reader.GradientBank.open(path, learner=learner, scheme=scheme)
        assert sorted(b.ids()) == sorted(computed) and b.manifest["scheme"] == scheme
        for pid, g in computed.items():
            got = lora.flatten(b.get(pid))
            if scheme == "fp32":
                assert torch.equal(got, g)
            elif scheme == "bf16":
                assert torch.equal(got, g.to(torch.bfloat16).float())
                assert ((got - g).abs() <= g.abs() * 2 ** -8).all()
            else:      # real gradients: within absmax/qmax of each group of 64 values of one tensor
                qmax = {"int8": 127, "int4": 7}[scheme]
                offset = 0
                for _, shape in layout:
                    n = shape[0] * shape[1]
                    for a in range(0, n, 64):
                        block = slice(offset + a, offset + min(a + 64, n))
                        assert float((got[block] - g[block]).abs().max()) <= float(g[block].abs().max()) / qmax
                    offset += n
        assert float(torch.stack(list(computed.values())).abs().max()) > 0


def test_several_schemes_from_one_gradient_computation(learner, dataset, monkeypatch):
    real, seen = encode.gradient_batches, []
    monkeypatch.setattr(encode, "gradient_batches", lambda lr, items, bs: seen.extend(items) or real(lr, items, bs))
    banks = encode.encode_schemes("enc-test", dataset, "dev", ["int4", "fp32", "int4-g64", "int8"], batch_size=4,
                                  learner=learner, overwrite=True)
    assert list(banks) == ["int4", "fp32", "int8"] and len(seen) == 7     # each passage computed once
    single = encode.encode("enc-test", dataset, "dev", scheme="fp32", learner=learner)   # resumes: nothing to do
    assert single == banks["fp32"] and len(seen) == 7
    reference = reader.GradientBank.open(banks["fp32"])
    for scheme, path in banks.items():
        b = reader.GradientBank.open(path, scheme=scheme)
        s = b.scheme
        want = s.decode(s.encode(reference.rows(reference.ids()), b.layout)[0], b.layout)
        assert torch.equal(b.rows(reference.ids()), want)
    # one bank short of passages: only the missing ones are computed, and only that bank gets them
    BankWriter.open(banks["int8"], reader.header_for(learner, "int8"), overwrite=True).abandon()
    encode.encode("enc-test", dataset, "dev", scheme="int8", end=2, learner=learner)
    seen.clear()
    encode.encode_schemes("enc-test", dataset, "dev", ["fp32", "int8"], learner=learner)
    assert len(seen) == 7 - 4 and len(reader.GradientBank.open(banks["int8"])) == 7


def _gradient_atol(learner, grads: dict[str, torch.Tensor], passages: int = 1) -> dict[str, float]:
    """Per LoRA tensor: how far a gradient computed in another batch (other padding, so sums in another order)
    may differ, for a sum of ``passages`` passage gradients (regrad_lib.io.tolerance: the chain of one passage
    gradient over bank_context_len tokens, plus the sum over passages; magnitude: the tensor's largest value)."""
    terms = tolerance.gradient_terms(learner.model.config, learner.preset.learner.bank_context_len,
                                     learner.preset.peft.r) + passages
    return {n: tolerance.reorder_tolerance(terms, float(g.abs().max())) for n, g in grads.items()}


def test_bank_equals_one_by_one_gradients(learner, dataset):
    path = encode.encode("enc-test", dataset, "dev", scheme="fp32", batch_size=8, learner=learner)
    b = reader.GradientBank.open(path)
    cut = learner.preset.learner.bank_context_len
    for p in encode.passages(dataset, "dev"):
        one = regrad.summed_gradient(learner.model, learner.phi, task_batches.passage_batch(learner.tokenizer,
                                                                                     [(p.title, p.text)], cut))
        got = b.get(p.pid)
        atol = _gradient_atol(learner, one)
        for n in one:
            torch.testing.assert_close(got[n], one[n], rtol=0, atol=atol[n])
            assert atol[n] < 0.01 * float(one[n].abs().max())       # far below the gradient itself


def test_sum_matches_the_summed_gradient_of_a_question(learner, dataset):
    path = encode.encode("enc-test", dataset, "dev", scheme="fp32", learner=learner)
    b = reader.GradientBank.open(path)
    task = task_batches.from_record(_records()[2], 3)
    direct = regrad.summed_gradient(learner.model, learner.phi,
                                    task_batches.passage_batch(learner.tokenizer, task.passages, 64))
    got = b.sum(list(task.passage_ids))
    many = b.sum_many([list(task.passage_ids), list(task.passage_ids[:1])])
    atol = _gradient_atol(learner, direct, passages=3)
    for n in direct:
        torch.testing.assert_close(got[n], direct[n], rtol=0, atol=atol[n])
        torch.testing.assert_close(many[n][0], got[n], rtol=0, atol=0)      # the same rows summed in the same order


def test_resume_after_interruption_gives_the_same_bank(learner, dataset, monkeypatch):
    row = reader.storage_scheme("fp32").row_bytes(lora.layout(learner.phi))
    whole = encode.encode("enc-test", dataset, "dev", scheme="fp32", batch_size=2, learner=learner,
                          shard_bytes=2 * row)
    reference = reader.GradientBank.open(whole)
    expected = {p: reference.rows([p])[0] for p in reference.ids()}

    real, calls = BankWriter._write_shard, []

    def dies_after_first_shard(self, *args):
        if calls:
            raise RuntimeError("killed")
        calls.append(args)
        real(self, *args)

    monkeypatch.setattr(BankWriter, "_write_shard", dies_after_first_shard)
    with pytest.raises(RuntimeError, match="killed"):
        encode.encode("enc-test", dataset, "dev", scheme="fp32", batch_size=2, learner=learner, shard_bytes=2 * row,
                      overwrite=True)
    monkeypatch.setattr(BankWriter, "_write_shard", real)
    assert len(reader.GradientBank.open(whole)) == 2

    resumed = encode.encode("enc-test", dataset, "dev", scheme="fp32", batch_size=2, learner=learner,
                            shard_bytes=2 * row)
    b = reader.GradientBank.open(resumed, learner=learner)
    assert sorted(b.ids()) == sorted(expected) and b.verify()["entries"] == len(expected)
    for p, g in expected.items():
        torch.testing.assert_close(b.rows([p])[0], g, rtol=1e-4, atol=1e-7)


def test_resume_extends_a_bank_with_new_records_only(learner, dataset, monkeypatch):
    encode.encode("enc-test", dataset, "dev", end=2, learner=learner, overwrite=True)
    assert len(reader.open_bank(3, "enc-test", dataset, "dev", reader.DEFAULT_SCHEME)) == 4
    seen = []
    real = encode.gradient_batches
    monkeypatch.setattr(encode, "gradient_batches", lambda lr, items, bs: seen.extend(items) or real(lr, items, bs))
    encode.encode("enc-test", dataset, "dev", learner=learner)
    assert len(seen) == 3 and len(reader.open_bank(3, "enc-test", dataset, "dev", reader.DEFAULT_SCHEME)) == 7


def test_bank_of_other_meta_weights_is_refused(learner, dataset):
    path = encode.encode("enc-test", dataset, "dev", end=1, learner=learner, overwrite=True)
    other = _make_run("enc-other", seed=1)
    with pytest.raises(on_disk.BankMismatchError) as err:
        reader.GradientBank.open(path, learner=other)
    assert learner.meta_hash() in str(err.value) and other.meta_hash() in str(err.value)
    with pytest.raises(on_disk.BankMismatchError, match="overwrite=True"):
        encode.encode("enc-test", dataset, "dev", end=1, learner=other)


def test_missing_id_error_names_how_to_fill_it(learner, dataset):
    path = encode.encode("enc-test", dataset, "dev", end=1, learner=learner, overwrite=True)
    with pytest.raises(KeyError, match=f"'999'.*04_encode.*dataset='{dataset}', split='dev'"):
        reader.GradientBank.open(path).get("999")


def test_input_errors(learner, dataset):
    with pytest.raises(FileNotFoundError, match="02_augment"):
        encode.passages("no-such-dataset", "dev")
    with pytest.raises(ValueError, match="selects none"):
        encode.passages(dataset, "dev", start=50)
    with pytest.raises(ValueError, match="topk=5"):
        encode.passages(dataset, "dev", topk=5)
    records = _records()
    records[1]["passages"][1] = "another text"
    artifacts.write_json(paths.augmented_file(dataset, "conflict"), records)
    with pytest.raises(ValueError, match="record 1: passage id"):
        encode.passages(dataset, "conflict")
    with pytest.raises(ValueError, match="bf8"):
        encode.encode("enc-test", dataset, "dev", scheme="bf8", learner=learner)
    with pytest.raises(ValueError, match="empty"):
        encode.encode_schemes("enc-test", dataset, "dev", [], learner=learner)


def test_notebook_helpers(learner, dataset):
    with pytest.raises(FileNotFoundError, match="03_train"):
        encode.EncodeSettings(run="never-trained", datasets=[dataset])
    with pytest.raises(FileNotFoundError, match="02_augment"):
        encode.EncodeSettings(run="enc-test", datasets=["missing"])
    with pytest.raises(ValueError, match="int3"):
        encode.EncodeSettings(run="enc-test", datasets=[dataset], frontier_schemes=["int3"])
    settings = encode.EncodeSettings(run="enc-test", datasets=dataset, start=1, limit=2, scheme="fp16",
                                     frontier_schemes="int4", overwrite=True)
    assert settings.datasets == [dataset] and settings.end == 3 and settings.schemes == ["fp16", "int4"]
    banks = encode.encode_all(settings, learner)
    assert list(banks[dataset]) == ["fp16", "int4"]
    table = encode.stats(banks)
    assert [(r["scheme"], r["entries"]) for r in table] == [("fp16", 4), ("int4", 4)]
    assert table[0]["bytes_per_passage"] == 2 * lora.numel(learner.phi) + 8
    assert table[1]["bytes_per_passage"] < table[0]["bytes_per_passage"] / 3
    norms = encode.gradient_norms(banks)
    assert len(norms) == 4 and min(norms) > 0
    report = encode.verify_all(banks, learner)
    assert report[f"{dataset}/fp16"]["entries"] == report[f"{dataset}/int4"]["entries"] == 4
