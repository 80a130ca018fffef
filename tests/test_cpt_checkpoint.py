"""The continual post-training checkpoint (``results/<run>/<dataset>/cpt/checkpoint/``) is verified like the training
files: a flipped bit in a trained weight or in AdamW's state, an edited stream state or a truncated file is refused
naming the file and the fix, and the checkpoint is left as it was; an intact one resumes exactly; one written before
checksums is still read. The save and load functions of regrad_lib.cpt.continual, on a few small tensors."""

from __future__ import annotations

import json
import logging
import pathlib
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from regrad_lib.cpt import continual
from regrad_lib.io import checkpoint, tensorfile

SETTINGS = {"dataset": "d", "cpt": {"chunks": 2}}


def _trained(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer]:
    """Two weights after two AdamW steps (so the optimizer holds exp_avg / exp_avg_sq)."""
    gen = torch.Generator().manual_seed(seed)
    named = {"layer.a": torch.randn(4, 3, generator=gen).requires_grad_(True),
             "layer.b": torch.randn(3, generator=gen).requires_grad_(True)}
    optimizer = torch.optim.AdamW(list(named.values()), lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        optimizer.zero_grad()
        sum((t ** 2).sum() for t in named.values()).backward()
        optimizer.step()
    return named, optimizer


@pytest.fixture()
def saved(tmp_path):
    """A checkpoint after chunk 1 in ``tmp_path/cpt``; (folder, weights, optimizer state)."""
    folder = tmp_path / "cpt"
    named, optimizer = _trained()
    state = {"settings": SETTINGS, "chunk": 1, "steps": 2, "drift": [{"chunk": 0}, {"chunk": 1}], "rows": []}
    continual._save(folder, named, optimizer, state)
    return folder, {n: t.detach().clone() for n, t in named.items()}, optimizer.state_dict()


def _resume(folder):
    """What post_train does with a checkpoint: its state (rank 0), then the weights and optimizer (every rank)."""
    named, optimizer = _trained(seed=1)
    state = continual._saved_state(folder, SETTINGS)
    continual._load(folder, named, optimizer, state.pop("optimizer"))
    return state, named, optimizer


def _offset(path: pathlib.Path, name: str) -> int:
    """The file offset of tensor ``name``'s first byte."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return 8 + size + json.loads(raw[8:8 + size])[name]["data_offsets"][0]


def _flip(path: pathlib.Path, offset: int, mask: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def test_an_intact_checkpoint_resumes_the_same_weights_and_optimizer(saved):
    folder, weights, optim = saved
    state, named, optimizer = _resume(folder)
    assert state["chunk"] == 1 and state["drift"] == [{"chunk": 0}, {"chunk": 1}]
    assert all(torch.equal(named[n], weights[n]) for n in weights)
    got = optimizer.state_dict()["state"]
    assert all(torch.equal(got[i][k], v) for i, entry in optim["state"].items() for k, v in entry.items()
               if torch.is_tensor(v))


@pytest.mark.parametrize("tensor", ["w.layer.a", "optim.0.exp_avg_sq"])
def test_a_flipped_bit_in_a_weight_or_in_adamw_state_is_refused_and_kept(saved, tensor):
    """One flipped exponent bit in a trained weight was served (cpt_rag's answers changed, no error); one in
    AdamW's state was resumed."""
    folder, _, _ = saved
    path = folder / continual.CHECKPOINT / continual.TENSORS
    _flip(path, _offset(path, tensor) + 3, 0x40)        # the exponent of a little-endian float32
    damaged = path.read_bytes()
    with pytest.raises(tensorfile.IntegrityError, match=r"cpt/checkpoint/state.safetensors: its tensors do not match "
                                                        r"their checksum.*overwrite = True"):
        _resume(folder)
    assert path.read_bytes() == damaged and (folder / continual.CHECKPOINT / continual.STATE).is_file()


def test_a_truncated_checkpoint_is_refused_naming_the_file(saved):
    """A truncated file gave a bare `SafetensorError ... invalid header length` naming no file."""
    folder, _, _ = saved
    path = folder / continual.CHECKPOINT / continual.TENSORS
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(tensorfile.IntegrityError, match=r"cpt/checkpoint/state.safetensors cannot be read: it is "
                                                        r"truncated or damaged.*overwrite = True"):
        _resume(folder)
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(tensorfile.IntegrityError, match=r"cpt/checkpoint/state.safetensors cannot be read"):
        _resume(folder)


def test_an_edited_stream_state_or_a_stripped_checksum_is_refused(saved):
    folder, _, _ = saved
    state_file = folder / continual.CHECKPOINT / continual.STATE
    good = state_file.read_text()
    state_file.write_text(good.replace('"steps": 2', '"steps": 3'))
    with pytest.raises(tensorfile.IntegrityError, match=r"cpt/checkpoint/stream_state.json does not match the "
                                                        r"checksum recorded in state.safetensors"):
        _resume(folder)
    state_file.write_text(good)
    path = folder / continual.CHECKPOINT / continual.TENSORS
    tensors, metadata = tensorfile.load(path, required=True, fix="")
    save_file(tensors, str(path), metadata={"chunk": "1"})             # the checksums stripped from the header
    with pytest.raises(tensorfile.IntegrityError, match=r"records no checksum, though stream_state.json says it was "
                                                        r"written with one"):
        _resume(folder)


def test_a_checkpoint_written_before_checksums_is_still_read(saved, caplog):
    folder, weights, _ = saved
    ckpt = folder / continual.CHECKPOINT
    state = json.loads((ckpt / continual.STATE).read_text())
    del state[continual.CHECKSUMS]
    (ckpt / continual.STATE).write_text(json.dumps(state))
    tensors, _ = tensorfile.load(ckpt / continual.TENSORS, required=True, fix="")
    save_file(tensors, str(ckpt / continual.TENSORS), metadata={"chunk": "1"})     # as the old _save wrote it
    with caplog.at_level(logging.WARNING):
        _, named, _ = _resume(folder)
    assert "written before CPT checkpoints carried checksums" in caplog.text
    assert all(torch.equal(named[n], weights[n]) for n in weights)


def test_a_full_disk_names_the_checkpoint_and_keeps_the_last_one(saved, monkeypatch):
    """A full disk raised `SafetensorError (os error 28)` naming no file."""
    folder, weights, _ = saved
    before = (folder / continual.CHECKPOINT / continual.TENSORS).read_bytes()

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')
    monkeypatch.setattr(tensorfile, "save_file", full)
    named, optimizer = _trained(seed=2)
    with pytest.raises(OSError, match=r"cannot write .*cpt/checkpoint/state.safetensors") as info:
        continual._save(folder, named, optimizer, {"settings": SETTINGS, "chunk": 2, "steps": 4, "drift": [],
                                                   "rows": []})
    assert info.value.errno == 28
    assert (folder / continual.CHECKPOINT / continual.TENSORS).read_bytes() == before
    monkeypatch.undo()
    assert _resume(folder)[0]["chunk"] == 1


def test_the_checkpoint_records_the_state_files_checksum(saved):
    folder, _, _ = saved
    metadata = tensorfile.read_metadata(folder / continual.CHECKPOINT / continual.TENSORS, fix="")
    assert metadata[checkpoint.STATE_SHA256] == tensorfile.text_digest(folder / continual.CHECKPOINT / continual.STATE)
    assert tensorfile.CHECKSUM in metadata and metadata["chunk"] == "1"
