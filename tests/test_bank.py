"""The Gradient Bank's file format: round trips, sums, shards, resume, and the promised errors (no model needed)."""

import json

import pytest
import torch

from regrad_lib import bank, lora

PHI = {"m.0.lora_A": torch.zeros(2, 3), "m.0.lora_B": torch.zeros(4, 2), "m.1.lora_A": torch.zeros(2, 5),
       "m.1.lora_B": torch.zeros(3, 2)}
D = lora.numel(PHI)  # 6 + 8 + 10 + 6 = 30


def _head(dtype="fp32", meta_hash="meta-1"):
    return bank.header(model="tiny-llama", model_id="tiny-llama", model_revision=None, preset="tiny", phi=PHI,
                       meta_hash=meta_hash, dtype=dtype, source={"run": "r", "dataset": "d", "split": "dev"})


def _vectors(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 3


def _write(path, ids, vectors, dtype="fp32", rows_per_shard=3, **kw):
    size = bank.storage_dtype(dtype).itemsize
    writer = bank.BankWriter.open(path, _head(dtype, **kw), shard_bytes=rows_per_shard * D * size)
    writer.append(ids, vectors)
    return writer.close()


@pytest.fixture()
def folder(tmp_path):
    return tmp_path / "offline" / "3" / "r" / "d" / "dev_all"


def test_round_trip_fp32_exact_and_layout(folder):
    ids = [f"p{i}" for i in range(7)]
    vectors = _vectors(7)
    _write(folder, ids, vectors)
    b = bank.GradientBank.open(folder)
    assert b.ids() == ids and len(b) == 7 and "p3" in b and "zz" not in b
    assert len(b.manifest["shards"]) == 3  # 3 + 3 + 1 rows
    assert b.bytes_per_passage == D * 4
    for i, pid in enumerate(ids):
        got = b.get(pid)
        assert list(got) == list(PHI) and got["m.0.lora_B"].shape == (4, 2)
        assert torch.equal(lora.flatten(got), vectors[i])
    assert torch.equal(b.rows(["p6", "p0", "p4", "p4"]), vectors[[6, 0, 4, 4]])


def test_round_trip_bf16_within_rounding(folder):
    vectors = _vectors(4)
    _write(folder, list("abcd"), vectors, dtype="bf16")
    b = bank.GradientBank.open(folder)
    assert b.bytes_per_passage == D * 2 and b.manifest["dtype"] == "bf16"
    got = torch.stack([lora.flatten(b.get(p)) for p in "abcd"])
    assert got.dtype == torch.float32
    assert torch.equal(got, vectors.to(torch.bfloat16).float())
    assert ((got - vectors).abs() <= vectors.abs() * 2 ** -8).all()


def test_sum_and_sum_many_equal_sums_of_entries(folder):
    ids = [f"p{i}" for i in range(6)]
    vectors = _vectors(6, seed=1)
    _write(folder, ids, vectors)
    b = bank.GradientBank.open(folder)
    total = b.sum(["p1", "p4", "p5"])
    expected = {n: b.get("p1")[n] + b.get("p4")[n] + b.get("p5")[n] for n in PHI}
    for n in PHI:
        torch.testing.assert_close(total[n], expected[n], rtol=1e-6, atol=1e-6)
    many = b.sum_many([["p1", "p4", "p5"], ["p0"], [], ["p0", "p0"]])
    for n in PHI:
        assert many[n].shape == (4, *PHI[n].shape)
        torch.testing.assert_close(many[n][0], total[n], rtol=1e-6, atol=1e-6)
        assert torch.equal(many[n][1], b.get("p0")[n])
        assert torch.equal(many[n][2], torch.zeros_like(PHI[n]))
        torch.testing.assert_close(many[n][3], 2 * b.get("p0")[n])


def test_missing_id_names_id_bank_and_fix(folder):
    _write(folder, ["a"], _vectors(1))
    b = bank.GradientBank.open(folder)
    with pytest.raises(KeyError) as err:
        b.sum(["a", "nope"])
    message = str(err.value)
    assert "'nope'" in message and "dev_all" in message and "04_encode" in message
    assert "dataset='d'" in message and "split='dev'" in message


def test_wrong_meta_or_layout_is_refused_with_both_hashes(folder):
    _write(folder, ["a"], _vectors(1))
    with pytest.raises(bank.BankMismatchError) as err:
        bank.GradientBank.open(folder, meta_hash="meta-2")
    assert "meta-1" in str(err.value) and "meta-2" in str(err.value) and "04_encode" in str(err.value)
    with pytest.raises(bank.BankMismatchError, match="layout_hash"):
        bank.GradientBank.open(folder, layout_hash="0123456789abcdef")
    with pytest.raises(bank.BankMismatchError, match="model"):
        bank.GradientBank.open(folder, model="smollm2-135m-instruct")
    assert len(bank.GradientBank.open(folder, meta_hash="meta-1", layout_hash=lora.layout_hash(PHI))) == 1


def test_truncated_shard_is_refused_naming_the_file(folder):
    _write(folder, list("abcd"), _vectors(4))
    shard = folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(bank.BankError, match="shard-00001.safetensors.*truncated"):
        bank.GradientBank.open(folder)
    shard.unlink()
    with pytest.raises(bank.BankError, match="shard-00001.safetensors.*missing"):
        bank.GradientBank.open(folder)


def test_corrupted_shard_fails_verify_naming_the_file(folder):
    _write(folder, list("abcd"), _vectors(4))
    assert bank.GradientBank.open(folder).verify()["entries"] == 4
    shard = folder / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(bank.BankError, match="shard-00000.safetensors.*corrupted"):
        bank.GradientBank.open(folder).verify()


def test_corrupted_header_gives_a_bank_error_on_read(folder):
    _write(folder, list("abcd"), _vectors(4))
    shard = folder / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\x00\xff{["
    shard.write_bytes(bytes(data))
    b = bank.GradientBank.open(folder)
    with pytest.raises(bank.BankError, match="shard-00000.safetensors cannot be read"):
        b.get("a")


def test_non_finite_values_are_refused_when_written(folder):
    vectors = _vectors(2)
    vectors[1, 3] = float("nan")
    writer = bank.BankWriter.open(folder, _head())
    with pytest.raises(ValueError, match=r"\['b'\]"):
        writer.append(["a", "b"], vectors)
    big = torch.full((1, D), 1e6)
    with pytest.raises(ValueError, match="fp16"):
        bank.BankWriter.open(folder.parent / "x", _head("fp16")).append(["a"], big)


@pytest.mark.parametrize("background", [True, False])
def test_interrupted_write_leaves_a_consistent_resumable_bank(folder, monkeypatch, background):
    ids, vectors = [f"p{i}" for i in range(8)], _vectors(8)
    real = bank.BankWriter._write_shard
    calls = []

    def flaky(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real(self, *args)

    monkeypatch.setattr(bank.BankWriter, "_write_shard", flaky)
    writer = bank.BankWriter.open(folder, _head(), shard_bytes=3 * D * 4, background=background)
    with pytest.raises(KeyboardInterrupt):
        writer.append(ids, vectors)
        writer.close()
    monkeypatch.setattr(bank.BankWriter, "_write_shard", real)
    partial = bank.GradientBank.open(folder)
    assert partial.ids() == ids[:3] and partial.verify()["entries"] == 3
    assert not list(folder.glob("*.tmp"))

    writer = bank.BankWriter.open(folder, _head(), shard_bytes=3 * D * 4)
    assert writer.ids() == set(ids[:3])
    writer.append(ids[3:], vectors[3:])
    writer.close()
    b = bank.GradientBank.open(folder)
    assert b.ids() == ids and b.verify()["entries"] == 8
    assert torch.equal(b.rows(ids), vectors)
    assert len(b.manifest["requests"]) == 2


def test_duplicate_ids_are_refused(folder):
    writer = bank.BankWriter.open(folder, _head())
    with pytest.raises(ValueError, match="'a'"):
        writer.append(["a", "a"], _vectors(2))
    writer.append(["a"], _vectors(1))
    with pytest.raises(ValueError, match="already in"):
        writer.append(["a"], _vectors(1))
    writer.close()


def test_shard_checksum_is_the_file_sha256(folder):
    import hashlib
    _write(folder, list("abcde"), _vectors(5), dtype="bf16", rows_per_shard=2)
    manifest = bank.GradientBank.open(folder).manifest
    for shard in manifest["shards"]:
        data = (folder / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]


def test_stray_files_of_a_crash_are_removed_on_resume(folder):
    _write(folder, list("abc"), _vectors(3))
    (folder / "shard-00001.safetensors").write_bytes(b"half a shard")
    (folder / ".shard-00001.safetensors.x.tmp").write_bytes(b"junk")
    writer = bank.BankWriter.open(folder, _head(), shard_bytes=3 * D * 4)
    writer.append(["d"], _vectors(1, seed=5))
    writer.close()
    b = bank.GradientBank.open(folder)
    assert b.ids() == list("abcd") and b.verify()["shards"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-00000.safetensors",
                                                        "shard-00001.safetensors"]


def test_resume_with_other_settings_is_refused_unless_overwrite(folder):
    _write(folder, ["a"], _vectors(1))
    with pytest.raises(bank.BankMismatchError, match="meta_hash.*overwrite=True"):
        bank.BankWriter.open(folder, _head(meta_hash="meta-2"))
    with pytest.raises(bank.BankMismatchError, match="dtype"):
        bank.BankWriter.open(folder, _head(dtype="bf16"))
    writer = bank.BankWriter.open(folder, _head(meta_hash="meta-2"), overwrite=True)
    assert writer.ids() == set()
    writer.append(["z"], _vectors(1))
    writer.close()
    assert bank.GradientBank.open(folder, meta_hash="meta-2").ids() == ["z"]


def test_manifest_records_identity_and_shard_map(folder):
    _write(folder, ["a", "b", "c", "d"], _vectors(4), dtype="fp16")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 4 and manifest["dtype"] == "fp16" and manifest["numel"] == D
    assert manifest["layout_hash"] == lora.layout_hash(PHI) and manifest["meta_hash"] == "meta-1"
    assert manifest["layout"][1] == ["m.0.lora_B", [4, 2]]
    assert [s["ids"] for s in manifest["shards"]] == [["a", "b", "c"], ["d"]]
    assert {"git_revision", "versions"} <= set(manifest["provenance"])
    assert bank.GradientBank.open(folder).bytes_on_disk() > 4 * D * 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="int8"):
        bank.storage_dtype("int8")
    with pytest.raises(FileNotFoundError, match="04_encode"):
        bank.GradientBank.open("/nonexistent/offline/3/r/d/dev_all")
