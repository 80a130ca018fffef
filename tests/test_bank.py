"""The Gradient Bank's file format: round trips per scheme, sums, shards, resume, and the promised errors."""

import hashlib
import json

import pytest
import torch

from regrad_lib.bank import on_disk, reader, schemes
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import lora
from regrad_lib.io import paths

PHI = {"m.0.lora_A": torch.zeros(2, 3), "m.0.lora_B": torch.zeros(4, 2), "m.1.lora_A": torch.zeros(2, 5),
       "m.1.lora_B": torch.zeros(3, 2)}
D = lora.numel(PHI)  # 6 + 8 + 10 + 6 = 30
SCHEMES = ["fp32", "bf16", "fp16", "int8", "int4", "int2"]


def _head(scheme="fp32", meta_hash="meta-1"):
    return on_disk.header(model="tiny-llama", model_id="tiny-llama", model_revision=None, preset="tiny", phi=PHI,
                        meta_hash=meta_hash, scheme=scheme, source={"run": "r", "dataset": "d", "split": "dev"})


def _row_bytes(scheme):
    return reader.storage_scheme(scheme).row_bytes(lora.layout(PHI))


def _vectors(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 3


def _write(path, ids, vectors, scheme="fp32", rows_per_shard=3, **kw):
    writer = BankWriter.open(path, _head(scheme, **kw), shard_bytes=rows_per_shard * _row_bytes(scheme))
    writer.append(ids, vectors)
    return writer.close()


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _save_manifest(folder, manifest):
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _data_start(shard, tensor="values"):
    """Byte offset in ``shard`` of the first byte of ``tensor``'s data."""
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n + json.loads(raw[8:8 + n])[tensor]["data_offsets"][0]


@pytest.fixture()
def folder(tmp_path):
    return tmp_path / "offline" / "3" / "r" / "d" / "dev_all" / "fp32"


def test_round_trip_fp32_exact_and_layout(folder):
    ids = [f"p{i}" for i in range(7)]
    vectors = _vectors(7)
    _write(folder, ids, vectors)
    b = reader.GradientBank.open(folder)
    assert b.ids() == ids and len(b) == 7 and "p3" in b and "zz" not in b
    assert len(b.manifest["shards"]) == 3  # 3 + 3 + 1 rows
    assert b.bytes_per_passage == D * 4 + 8 and b.scheme.name == "fp32"
    for i, pid in enumerate(ids):
        got = b.get(pid)
        assert list(got) == list(PHI) and got["m.0.lora_B"].shape == (4, 2)
        assert torch.equal(lora.flatten(got), vectors[i])
    assert torch.equal(b.rows(["p6", "p0", "p4", "p4"]), vectors[[6, 0, 4, 4]])


@pytest.mark.parametrize("scheme", SCHEMES[1:])
def test_round_trip_every_scheme_equals_its_decoding(folder, scheme):
    vectors = _vectors(5)
    _write(folder, list("abcde"), vectors, scheme=scheme, rows_per_shard=2)
    b = reader.GradientBank.open(folder, scheme=scheme)
    s = schemes.parse(scheme)
    assert b.bytes_per_passage == s.row_bytes(b.layout) + 8 and b.manifest["scheme"] == scheme
    expected = s.decode(s.encode(vectors, b.layout)[0], b.layout)
    got = torch.stack([lora.flatten(b.get(p)) for p in "abcde"])
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(b.rows(list("ecb")), expected[[4, 2, 1]])
    if scheme == "bf16":
        assert ((got - vectors).abs() <= vectors.abs() * 2 ** -8).all()
    assert b.verify()["scheme"] == scheme


@pytest.mark.parametrize("scheme", ["fp32", "bf16", "int8", "int4"])
def test_sum_and_sum_many_equal_sums_of_entries(folder, scheme):
    ids = [f"p{i}" for i in range(6)]
    _write(folder, ids, _vectors(6, seed=1), scheme=scheme)
    b = reader.GradientBank.open(folder)
    total = b.sum(["p1", "p4", "p5"])
    expected = {n: (b.get("p1")[n] + b.get("p4")[n]) + b.get("p5")[n] for n in PHI}
    many = b.sum_many([["p1", "p4", "p5"], ["p0"], [], ["p0", "p0"]])
    for n in PHI:
        assert torch.equal(total[n], expected[n])            # fp32 sums of decoded entries, in the order given
        assert many[n].shape == (4, *PHI[n].shape)
        assert torch.equal(many[n][0], total[n])
        assert torch.equal(many[n][1], b.get("p0")[n])
        assert torch.equal(many[n][2], torch.zeros_like(PHI[n]))
        assert torch.equal(many[n][3], 2 * b.get("p0")[n])


def test_missing_id_names_id_bank_and_fix(folder):
    _write(folder, ["a"], _vectors(1))
    b = reader.GradientBank.open(folder)
    with pytest.raises(KeyError) as err:
        b.sum(["a", "nope"])
    message = str(err.value)
    assert "'nope'" in message and "dev_all" in message and "04_encode" in message
    assert "dataset='d'" in message and "split='dev'" in message and "scheme='fp32'" in message


@pytest.mark.parametrize("scheme", ["fp32", "int4", "int2"])
def test_wrong_meta_layout_model_or_scheme_is_refused(folder, scheme):
    _write(folder, ["a"], _vectors(1), scheme=scheme)
    with pytest.raises(on_disk.BankMismatchError) as err:
        reader.GradientBank.open(folder, meta_hash="meta-2")
    assert "meta-1" in str(err.value) and "meta-2" in str(err.value) and "04_encode" in str(err.value)
    with pytest.raises(on_disk.BankMismatchError, match="layout_hash"):
        reader.GradientBank.open(folder, layout_hash="0123456789abcdef")
    with pytest.raises(on_disk.BankMismatchError, match="model"):
        reader.GradientBank.open(folder, model="smollm2-135m-instruct")
    with pytest.raises(on_disk.BankMismatchError, match=f"scheme: bank '{scheme}' != requested 'int8'"):
        reader.GradientBank.open(folder, scheme="int8")
    assert len(reader.GradientBank.open(folder, meta_hash="meta-1", layout_hash=lora.layout_hash(PHI))) == 1


def test_truncated_or_missing_shard_is_refused_naming_the_file(folder):
    _write(folder, list("abcd"), _vectors(4))
    shard = folder / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(on_disk.BankError, match="shard-00001.safetensors.*truncated"):
        reader.GradientBank.open(folder)
    shard.unlink()
    with pytest.raises(on_disk.BankError, match="shard-00001.safetensors.*missing"):
        reader.GradientBank.open(folder)


@pytest.mark.parametrize("scheme", ["fp32", "bf16", "int4"])
def test_sixteen_flipped_bytes_are_never_served(folder, scheme):
    """Without row checksums, 16 flipped bytes in a shard made ``get`` serve a gradient off by 8.1e3."""
    _write(folder, list("abcdef"), _vectors(6), scheme=scheme)
    shard = folder / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    row_len = reader.storage_scheme(scheme).shapes(lora.layout(PHI))["values"][0] * \
        reader.storage_scheme(scheme).value_dtype.itemsize
    start = _data_start(shard) + row_len + 2          # inside row 1 ('b')
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))                     # same size: only a checksum can tell
    b = reader.GradientBank.open(folder)                 # the header is intact
    assert torch.equal(b.get("a")["m.0.lora_A"], b.get("a")["m.0.lora_A"])    # other rows are still served
    for read in (lambda: b.get("b"), lambda: b.rows(["c", "b"]), lambda: b.sum(["a", "b"]),
                 lambda: b.sum_many([["a"], ["b"]]), lambda: b.norms()):
        with pytest.raises(on_disk.BankCorruptError, match=r"shard-00000.safetensors row 1 \(passage 'b'\).*checksum"):
            read()
    with pytest.raises(on_disk.BankCorruptError, match="sha256"):
        b.verify()


def test_flipped_checksum_bytes_are_refused(folder):
    _write(folder, list("abc"), _vectors(3))
    shard = folder / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[_data_start(shard, "crc32") + 8] ^= 0x01       # row 1's stored CRC
    shard.write_bytes(bytes(data))
    with pytest.raises(on_disk.BankCorruptError, match="row 1"):
        reader.GradientBank.open(folder).get("b")


def test_corrupted_header_is_refused_on_open(folder):
    _write(folder, list("abcd"), _vectors(4))
    shard = folder / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\x00\xff{["
    shard.write_bytes(bytes(data))
    with pytest.raises(on_disk.BankCorruptError, match="shard-00000.safetensors cannot be read"):
        reader.GradientBank.open(folder)


def test_id_removed_from_a_shard_list_is_refused(folder):
    """Without an id-list check, an id removed from a shard's id list made ``get`` serve the neighbouring row."""
    _write(folder, list("abcdef"), _vectors(6))
    good = _manifest(folder)
    m = _manifest(folder)
    del m["shards"][0]["ids"][1]
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match=r"manifest.json: field 'shards\[0\].ids' lists 2 ids for 3 rows"):
        reader.GradientBank.open(folder)
    m["shards"][0]["rows"] = 2                               # made consistent in the manifest: the hash tells
    m["count"] = 5
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match=r"'shards\[0\].ids' does not match shards\[0\].ids_sha256"):
        reader.GradientBank.open(folder)
    m["shards"][0]["ids_sha256"] = on_disk.ids_checksum(m["shards"][0]["ids"])
    _save_manifest(folder, m)                                # and its hash: the shard header tells
    with pytest.raises(on_disk.BankFormatError, match=r"shard-00000.safetensors \(manifest field 'shards\[0\]'\).*id "
                                                    r"list differs"):
        reader.GradientBank.open(folder)
    _save_manifest(folder, good)
    assert reader.GradientBank.open(folder).ids() == list("abcdef")


def test_swapped_ids_are_refused(folder, monkeypatch):
    """Without an id-list check, two ids swapped in the manifest passed open, get and verify."""
    _write(folder, list("abcdef"), _vectors(6))
    m = _manifest(folder)
    ids = m["shards"][1]["ids"]
    ids[0], ids[2] = ids[2], ids[0]
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match=r"'shards\[1\].ids' does not match"):
        reader.GradientBank.open(folder)
    m["shards"][1]["ids_sha256"] = on_disk.ids_checksum(ids)
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match="id list differs"):
        reader.GradientBank.open(folder)
    monkeypatch.setattr(reader, "check_shard_header", lambda *a: None)   # without the header check: the row CRCs
    b = reader.GradientBank.open(folder)
    with pytest.raises(on_disk.BankCorruptError, match=r"row 0 \(passage 'f'\)"):
        b.get("f")
    with pytest.raises(on_disk.BankCorruptError):
        b.verify()


@pytest.mark.parametrize("edit,field", [
    (lambda m: [], "the manifest is a JSON list"),
    (lambda m: {**m, "count": 7}, r"field 'count' = 7 but the shards hold 6 rows"),
    (lambda m: {**m, "count": "6"}, r"field 'count' is str"),
    (lambda m: {**m, "shards": m["shards"] + [m["shards"][0]]}, r"field 'shards\[2\].file' .* is listed twice"),
    (lambda m: {**m, "shards": {"0": m["shards"][0]}}, r"field 'shards' is dict"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "rows": "3"}, m["shards"][1]]}, r"'shards\[0\].rows' is str"),
    (lambda m: {**m, "shards": [{**m["shards"][0], "file": "../x.safetensors"}, m["shards"][1]]},
     r"'shards\[0\].file' = '../x.safetensors' is not a plain"),
    (lambda m: {k: v for k, v in m.items() if k != "meta_hash"}, r"field 'meta_hash' is missing"),
    (lambda m: {**m, "numel": 31}, r"field 'numel' = 31"),
    (lambda m: {**m, "layout": m["layout"][:-1]}, r"field 'layout_hash' does not match"),
    (lambda m: {**m, "scheme": "int3"}, r"field 'scheme'"),
    (lambda m: {**m, "group_size": 64}, r"field 'group_size' = 64 does not match scheme 'fp32'"),
    (lambda m: {**m, "format": "other"}, r"field 'format'"),
])
def test_structural_manifest_errors_name_the_manifest_and_field(folder, edit, field):
    _write(folder, list("abcdef"), _vectors(6))
    _save_manifest(folder, edit(_manifest(folder)))
    with pytest.raises(on_disk.BankFormatError, match=field) as err:
        reader.GradientBank.open(folder)
    assert "dev_all/fp32/manifest.json" in str(err.value) and "04_encode" in str(err.value)


def test_a_manifest_key_given_twice_is_refused(folder):
    """A manifest with `scheme` twice was read with the last one."""
    _write(folder, list("abcdef"), _vectors(6))
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text.replace('"scheme": "fp32"', '"scheme": "int8", "scheme": "fp32"', 1))
    with pytest.raises(on_disk.BankFormatError, match=r"dev_all/fp32/manifest.json cannot be read \(.*key 'scheme' "
                                                     r"appears twice in one JSON object \('int8', then 'fp32'\)"):
        reader.GradientBank.open(folder)


def test_duplicate_ids_across_shards_are_refused(folder):
    _write(folder, list("abcdef"), _vectors(6))
    m = _manifest(folder)
    m["shards"][1]["ids"][2] = "a"
    m["shards"][1]["ids_sha256"] = on_disk.ids_checksum(m["shards"][1]["ids"])
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match=r"'shards\[1\].ids' repeats passage id 'a' \(also in "
                                                    r"shards\[0\].ids\)"):
        reader.GradientBank.open(folder)


def test_old_version_bank_asks_for_a_re_encode(folder):
    _write(folder, ["a"], _vectors(1))
    m = _manifest(folder)
    m["version"] = 1
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match="format version 1.*reads version 2.*re-encode.*overwrite=True"):
        reader.GradientBank.open(folder)


def test_a_shard_of_another_scheme_is_refused(tmp_path, folder):
    """Schemes are never mixed within one bank: a shard of an int4 bank copied over an fp32 one is refused."""
    _write(folder, list("abc"), _vectors(3))
    other = _write(tmp_path / "int4", list("abc"), _vectors(3), scheme="int4")
    m = _manifest(folder)
    (folder / "shard-00000.safetensors").write_bytes((other / "shard-00000.safetensors").read_bytes())
    m["shards"][0]["bytes"] = (folder / "shard-00000.safetensors").stat().st_size
    _save_manifest(folder, m)
    with pytest.raises(on_disk.BankFormatError, match="scheme='int4', the manifest 'fp32'.*never mixed"):
        reader.GradientBank.open(folder)


def test_non_finite_values_are_refused_when_written(folder):
    vectors = _vectors(2)
    vectors[1, 3] = float("nan")
    for scheme in ("fp32", "int4"):
        writer = BankWriter.open(folder.parent / scheme, _head(scheme))
        with pytest.raises(ValueError, match=r"\['b'\].*" + scheme):
            writer.append(["a", "b"], vectors)
    big = torch.full((1, D), 1e6)
    with pytest.raises(ValueError, match="fp16"):
        BankWriter.open(folder.parent / "x", _head("fp16")).append(["a"], big)


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("scheme", ["fp32", "int4"])
def test_interrupted_write_leaves_a_consistent_resumable_bank(folder, monkeypatch, background, scheme):
    ids, vectors = [f"p{i}" for i in range(8)], _vectors(8)
    real = BankWriter._write_shard
    calls = []

    def flaky(self, *args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real(self, *args)

    monkeypatch.setattr(BankWriter, "_write_shard", flaky)
    writer = BankWriter.open(folder, _head(scheme), shard_bytes=3 * _row_bytes(scheme), background=background)
    with pytest.raises(KeyboardInterrupt):
        writer.append(ids, vectors)
        writer.close()
    monkeypatch.setattr(BankWriter, "_write_shard", real)
    partial = reader.GradientBank.open(folder)
    assert partial.ids() == ids[:3] and partial.verify()["entries"] == 3
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))

    writer = BankWriter.open(folder, _head(scheme), shard_bytes=3 * _row_bytes(scheme))
    assert writer.ids() == set(ids[:3])
    writer.append(ids[3:], vectors[3:])
    writer.close()
    b = reader.GradientBank.open(folder)
    assert b.ids() == ids and b.verify()["entries"] == 8
    s = schemes.parse(scheme)
    assert torch.equal(b.rows(ids), s.decode(s.encode(vectors, b.layout)[0], b.layout))
    assert len(b.manifest["requests"]) == 2


@pytest.mark.parametrize("scheme", ["fp32", "int4", "int2"])
def test_duplicate_ids_are_refused(folder, scheme):
    writer = BankWriter.open(folder, _head(scheme))
    with pytest.raises(ValueError, match="'a'"):
        writer.append(["a", "a"], _vectors(2))
    writer.append(["a"], _vectors(1))
    with pytest.raises(ValueError, match="already in"):
        writer.append(["a"], _vectors(1))
    writer.close()


@pytest.mark.parametrize("scheme", ["bf16", "int4"])
def test_shard_checksum_is_the_file_sha256_and_the_header_describes_the_shard(folder, scheme):
    _write(folder, list("abcde"), _vectors(5), scheme=scheme, rows_per_shard=2)
    manifest = reader.GradientBank.open(folder).manifest
    for shard in manifest["shards"]:
        data = (folder / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n])["__metadata__"]
        assert json.loads(meta["ids"]) == shard["ids"] and meta["ids_sha256"] == shard["ids_sha256"]
        assert json.loads(meta["scheme"]) == scheme and json.loads(meta["meta_hash"]) == "meta-1"


def test_stray_files_of_a_crash_are_removed_on_resume(folder):
    _write(folder, list("abc"), _vectors(3))
    (folder / "shard-00001.safetensors").write_bytes(b"half a shard")
    (folder / ".shard-00001.safetensors.x.tmp").write_bytes(b"junk")
    (folder / "shard-w2-00000.safetensors").write_bytes(b"another writer's shard")
    writer = BankWriter.open(folder, _head(), shard_bytes=3 * _row_bytes("fp32"))
    writer.append(["d"], _vectors(1, seed=5))
    writer.close()
    b = reader.GradientBank.open(folder)
    assert b.ids() == list("abcd") and b.verify()["shards"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-00000.safetensors",
                                                        "shard-00001.safetensors", "shard-w2-00000.safetensors"]


def test_shard_prefix_names_the_files(folder):
    writer = BankWriter.open(folder, _head(), shard_bytes=2 * _row_bytes("fp32"), prefix="shard-w1")
    writer.append(list("abc"), _vectors(3))
    writer.close()
    assert [s["file"] for s in _manifest(folder)["shards"]] == ["shard-w1-00000.safetensors",
                                                               "shard-w1-00001.safetensors"]
    with pytest.raises(ValueError, match="prefix"):
        BankWriter.open(folder, _head(), prefix="../x")


def test_resume_with_other_settings_is_refused_unless_overwrite(folder):
    _write(folder, ["a"], _vectors(1))
    with pytest.raises(on_disk.BankMismatchError, match="meta_hash.*overwrite=True"):
        BankWriter.open(folder, _head(meta_hash="meta-2"))
    with pytest.raises(on_disk.BankMismatchError, match="scheme: bank 'fp32' != now 'int4'.*never mixes"):
        BankWriter.open(folder, _head(scheme="int4"))
    _write(folder.parent / "int4", ["a"], _vectors(1), scheme="int4")
    with pytest.raises(on_disk.BankMismatchError, match="group_size: bank 64 != now 128"):
        BankWriter.open(folder.parent / "int4", _head(scheme="int4-g128"))
    writer = BankWriter.open(folder, _head(meta_hash="meta-2"), overwrite=True)
    assert writer.ids() == set()
    writer.append(["z"], _vectors(1))
    writer.close()
    assert reader.GradientBank.open(folder, meta_hash="meta-2").ids() == ["z"]


def test_manifest_records_identity_and_shard_map(folder):
    _write(folder, ["a", "b", "c", "d"], _vectors(4), scheme="int8")
    manifest = _manifest(folder)
    assert manifest["count"] == 4 and manifest["scheme"] == "int8" and manifest["group_size"] == 64
    assert manifest["numel"] == D and manifest["version"] == 2
    assert manifest["layout_hash"] == lora.layout_hash(PHI) and manifest["meta_hash"] == "meta-1"
    assert manifest["layout"][1] == ["m.0.lora_B", [4, 2]]
    assert [s["ids"] for s in manifest["shards"]] == [["a", "b", "c"], ["d"]]
    assert {"git_revision", "versions"} <= set(manifest["provenance"])
    assert reader.GradientBank.open(folder).bytes_on_disk() > 4 * _row_bytes("int8")


def test_bank_paths_are_keyed_by_scheme(tmp_path, monkeypatch):
    monkeypatch.setenv("REGRAD_WORK", str(tmp_path))
    for scheme in ("int4", "bf16"):
        _write(paths.bank_dir(3, "r", "d", "dev", scheme), ["a"], _vectors(1), scheme=scheme)
    assert reader.schemes_on_disk(3, "r", "d", "dev") == ["bf16", "int4"]
    assert reader.open_bank(3, "r", "d", "dev", "int4").scheme.name == "int4"
    with pytest.raises(FileNotFoundError, match=r"dev_all/int8 .*04_encode.*schemes \['bf16', 'int4'\]"):
        reader.open_bank(3, "r", "d", "dev", "int8")


def test_bad_arguments():
    with pytest.raises(ValueError, match="int3"):
        reader.storage_scheme("int3")
    with pytest.raises(FileNotFoundError, match="04_encode"):
        reader.GradientBank.open("/nonexistent/offline/3/r/d/dev_all/bf16")
