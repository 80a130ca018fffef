"""Damaged, foreign or non-finite training files are refused naming the file: checksums of training artifacts,
finite weights, errors that name files, empty and ambiguous datasets, duplicate JSON keys, file modes, the bank's
leftover manifest temporary, bounded group sizes."""

import json
import math
import os
import pathlib
import struct

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from regrad_lib import config, testing
from regrad_lib.bank import encode, reader, schemes
from regrad_lib.core import adapters, regrad
from regrad_lib.core.learner import Learner
from regrad_lib.data import datasets, qa_records
from regrad_lib.io import artifacts, checkpoint, ownership, paths, run_state, tensorfile
from regrad_lib.io.run_state import UnfinishedRunError
from regrad_lib.training import train

DATASET = "integrityqa"


def _records():
    cities = ["Rome", "Oslo", "Lima", "Kyiv", "Riga", "Bern", "Doha", "Baku"]
    return [{"test_id": i, "question": f"Which city is number {i}?", "answers": [c],
             "passages": [f"City {i} is {c}.", f"{c} is big.", f"See {c}."],
             "passage_ids": [str(3 * i), str(3 * i + 1), str(3 * i + 2)]} for i, c in enumerate(cities)]


def _preset(**train_args):
    base = {"max_steps": 4, "meta_batch_size": 2, "tasks_per_forward": 2, "validation_size": 2, "eval_steps": 2,
            "save_steps": 2, "metric_for_best_model": "loss"}
    return config.load_preset("tiny", {"train": {**base, **train_args}})


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    artifacts.write_json(paths.augmented_file(DATASET, "train_all"), _records())
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), _records()[:3])
    return [DATASET]


@pytest.fixture(scope="module")
def run(data):
    train.train("integrity-checked", _preset(), data)
    return "integrity-checked"


def _data_start(path) -> int:
    raw = pathlib.Path(path).read_bytes()
    return 8 + struct.unpack("<Q", raw[:8])[0]


def _flip(path, offset: int, mask: int) -> bytes:
    """Flip bits ``mask`` of the byte at ``offset``; returns the original bytes (to restore)."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    changed = bytearray(raw)
    changed[offset] ^= mask
    path.write_bytes(bytes(changed))
    return raw


# --- checksums ------------------------------------------------------------------------------------------

def test_a_flipped_exponent_bit_in_meta_state_is_refused_naming_the_file(run):
    """It was evaluated (no_update NLL 6.9164 -> 6.9315) and the run still counted as finished."""
    path = paths.output_dir(run) / paths.META_STATE
    original = _flip(path, _data_start(path) + 3, 0x40)          # the exponent byte of the first fp32 value
    try:
        for load in (lambda: Learner.from_run(run), lambda: run_state.read_alpha(run),
                     lambda: adapters.export_run(run)):
            with pytest.raises(tensorfile.IntegrityError, match=rf"outputs/{run}/meta_state.safetensors: its "
                                                                r"tensors do not match their checksum"):
                load()
    finally:
        path.write_bytes(original)
    Learner.from_run(run)


def test_a_stripped_checksum_in_a_marked_run_is_refused(run, tmp_path):
    path = paths.output_dir(run) / paths.META_STATE
    original = path.read_bytes()
    tensors, meta = tensorfile.load(path, required=True, fix="-")
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != tensorfile.CHECKSUM})
    try:
        with pytest.raises(tensorfile.IntegrityError, match="has no checksum .* its header was changed or damaged"):
            Learner.from_run(run)
    finally:
        path.write_bytes(original)


@pytest.fixture()
def interrupted(data):
    """An unfinished run: its checkpoint after step 2 of 4, no summary."""
    name = "integrity-interrupted"
    train.train(name, _preset(max_steps=2), data, overwrite=True)
    folder = paths.output_dir(name)
    (folder / paths.TRAIN_SUMMARY).unlink()
    state = artifacts.read_json(folder / paths.TRAIN_REQUEST)
    state["preset"]["train"]["max_steps"] = 4               # the same run, asked for 4 steps: it resumes at 2
    artifacts.write_json(folder / paths.TRAIN_REQUEST, state)
    ckpt_state = checkpoint.folder(folder) / checkpoint.STATE
    saved = artifacts.read_json(ckpt_state)
    assert saved["step"] == 2
    return name


def test_a_flipped_byte_in_the_checkpoint_is_refused_on_resume(data, interrupted):
    tensors = checkpoint.folder(paths.output_dir(interrupted)) / checkpoint.TENSORS
    _flip(tensors, len(tensors.read_bytes()) - 5, 0x01)      # a byte of the last tensor
    with pytest.raises(tensorfile.IntegrityError, match=r"checkpoint/state.safetensors: its tensors do not match "
                                                        r"their checksum.*cannot be resumed"):
        train.train(interrupted, _preset(), data)


def test_an_edited_step_is_refused_on_resume(data, interrupted):
    """A step edited by +3: the resume 'succeeded' with different weights."""
    file = checkpoint.folder(paths.output_dir(interrupted)) / checkpoint.STATE
    state = json.loads(file.read_text())
    state["step"] += 3
    file.write_text(json.dumps(state, indent=2) + "\n")
    with pytest.raises(tensorfile.IntegrityError, match=r"checkpoint/trainer_state.json does not match the checksum "
                                                        r"recorded in state.safetensors"):
        train.train(interrupted, _preset(), data)


def test_a_truncated_checkpoint_is_refused_naming_the_file(data, interrupted):
    """It was a bare SafetensorError naming no file."""
    tensors = checkpoint.folder(paths.output_dir(interrupted)) / checkpoint.TENSORS
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(tensorfile.IntegrityError, match=r"checkpoint/state.safetensors cannot be read: it is "
                                                        r"truncated or damaged"):
        train.train(interrupted, _preset(), data)


def test_an_intact_checkpoint_resumes(data, interrupted):
    assert train.train(interrupted, _preset(), data)["steps"] == 4


def test_runs_made_before_checksums_still_load_unverified(data, caplog):
    """A run folder without the marker, whose files carry no checksum (as before this change), is read as it
    was; a marked run must carry them (above)."""
    preset = _preset()
    learner = testing.saved_trained_run("integrity-legacy", preset)
    path = paths.output_dir("integrity-legacy") / paths.META_STATE
    save_file(learner.state_dict(), str(path), metadata={"alpha_mode": learner.alpha.mode})   # no checksum
    assert not ownership.run_marked(path.parent)
    with caplog.at_level("WARNING"):
        loaded = Learner.from_run("integrity-legacy")
    assert loaded.meta_hash() == learner.meta_hash()
    assert "written before training files carried checksums" in caplog.text


def test_checksums_cover_names_dtypes_shapes_and_metadata():
    t = {"a": torch.arange(4.0)}
    d = tensorfile.digest(t, {"step": "2"})
    assert d != tensorfile.digest(t, {"step": "5"})
    assert d != tensorfile.digest({"b": torch.arange(4.0)}, {"step": "2"})
    assert d != tensorfile.digest({"a": torch.arange(4.0).view(2, 2)}, {"step": "2"})
    assert d != tensorfile.digest({"a": torch.arange(4.0).double()}, {"step": "2"})
    assert d == tensorfile.digest({"a": torch.arange(4.0)}, {"step": "2", tensorfile.CHECKSUM: "x"})


@pytest.mark.parametrize("required", [True, False, None])
def test_a_checksum_present_is_verified_whatever_required_says(tmp_path, required):
    """``required`` only decides what a file WITHOUT a checksum means; a file that carries one (a legacy folder's
    file rewritten since, a PEFT adapter of ours) is verified in every case."""
    path = tmp_path / "t.safetensors"
    tensorfile.save(path, {"a": torch.arange(4.0)}, {"step": "2"})
    assert tensorfile.load(path, required=required, fix="-")[0]["a"].equal(torch.arange(4.0))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01                            # the last byte: the high byte of a[3] (3.0 becomes 3.0000...x)
    path.write_bytes(bytes(raw))
    with pytest.raises(tensorfile.IntegrityError, match="t.safetensors: its tensors do not match their checksum"):
        tensorfile.load(path, required=required, fix="-")


def test_meta_hash_covers_phi_and_alpha_each_alone(tiny_model_dir):
    """The hash ranks compare before and after training (and the bank's manifest) changes when only a step size
    changes, and when only one LoRA value changes."""
    learner = Learner.create(config.load_preset("tiny"))
    start = learner.meta_hash()
    alpha = next(iter(learner.alpha.values.values()))
    phi = next(iter(learner.phi.values()))
    with torch.no_grad():
        alpha.add_(1e-3)
        moved_alpha = learner.meta_hash()
        alpha.sub_(1e-3)
        assert learner.meta_hash() == start                      # back: the same bytes, the same hash
        phi.view(-1)[0] += 1e-3
        moved_phi = learner.meta_hash()
    assert len({start, moved_alpha, moved_phi}) == 3


# --- non-finite weights --------------------------------------------------------------------------------------

def _peft_adapter(folder, preset, fill=None):
    """A PEFT adapter of the tiny preset's layout written as peft would (no regrad checksum)."""
    learner = Learner.create(preset)
    weights = {adapters.peft_key(n): p.detach().clone() for n, p in learner.phi.items()}
    if fill is not None:
        first = sorted(weights)[0]
        weights[first][0, 0] = fill
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / adapters.WEIGHTS_FILE), metadata={"format": "pt"})
    adapters.lora_config(preset.peft, preset.learner.model_name_or_path).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("fill", [math.nan, math.inf])
def test_a_non_finite_warm_start_adapter_is_refused_naming_the_file(data, tmp_path, fill):
    """Training then blamed two questions ("lower the learning rate") instead of the adapter."""
    folder = _peft_adapter(tmp_path / "bad", _preset(), fill)
    preset = _preset().replace(learner={"init_adapter": str(folder)})
    with pytest.raises(ValueError, match=r"bad/adapter_model.safetensors: non-finite weights \(NaN or inf\) in "
                                         r"base_model.model.*lora_.\.weight \(1 of"):
        train.train("integrity-warm-nan", preset, data)
    assert not (paths.output_dir("integrity-warm-nan") / paths.TRAIN_SUMMARY).exists()


def test_a_run_whose_steps_were_all_skipped_is_not_finished(data, monkeypatch):
    """With on_nonfinite='skip' it ended "finished" with 4 of 4 steps skipped."""
    real = regrad.meta_losses

    def nan(*args, **kwargs):
        losses = real(*args, **kwargs)
        return losses if kwargs.get("first_order") else losses * math.nan
    monkeypatch.setattr(regrad, "meta_losses", nan)
    with pytest.raises(train.NonFiniteError, match=r"every one of the 4 steps was skipped as non-finite.* not "
                                                   "finished"):
        train.train("integrity-all-skipped", _preset(on_nonfinite="skip"), data)
    assert not (paths.output_dir("integrity-all-skipped") / paths.TRAIN_SUMMARY).exists()
    with pytest.raises(UnfinishedRunError):
        Learner.from_run("integrity-all-skipped")


def test_export_refuses_non_finite_weights(data, tmp_path):
    preset = _preset()
    weights = {n: p.detach().clone() for n, p in Learner.create(preset).phi.items()}
    name = sorted(weights)[1]
    weights[name][0, 0] = math.nan
    with pytest.raises(ValueError, match=rf"adapter .*nan-out: non-finite weights \(NaN or inf\) in "
                                         rf"{adapters.peft_key(name)}.*not written"):
        adapters.save(tmp_path / "nan-out", weights, preset.peft)
    assert not (tmp_path / "nan-out").exists()


def test_meta_state_with_non_finite_weights_is_refused_at_load(data):
    learner = testing.saved_trained_run("integrity-nan-state", _preset())
    path = paths.output_dir("integrity-nan-state") / paths.META_STATE
    tensors = learner.state_dict()
    tensors[sorted(k for k in tensors if k.startswith("phi."))[0]][0, 0] = math.inf
    tensorfile.save(path, tensors)
    with pytest.raises(ValueError, match=r"outputs/integrity-nan-state/meta_state.safetensors: non-finite "
                                         r"weights .* in phi\."):
        Learner.from_run("integrity-nan-state")
    with pytest.raises(ValueError, match="refusing|non-finite"):
        learner.phi[next(iter(learner.phi))].data.fill_(math.nan)
        learner.save(path)


# --- files named in errors ---------------------------------------------------------------------------

def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", full)
    target = tmp_path / "offline" / "manifest.json"
    with pytest.raises(OSError, match=r"No space left on device \(writing .*offline/manifest.json\)") as info:
        artifacts.write_json(target, {"a": 1})
    assert info.value.errno == 28 and info.value.filename == str(target)
    monkeypatch.undo()

    def rust_full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                              'left on device" })')
    monkeypatch.setattr(tensorfile, "save_file", rust_full)
    learner = Learner.create(_preset())
    optimizer = torch.optim.AdamW(list(learner.phi.values()))
    with pytest.raises(OSError, match=r"cannot write .*ckpt-run/checkpoint/state.safetensors") as info:
        checkpoint.save(tmp_path / "ckpt-run", learner, optimizer, {"step": 1})
    assert info.value.errno == 28
    assert not (tmp_path / "ckpt-run" / "checkpoint").exists()          # the old checkpoint (none) stays


def test_broken_adapter_files_are_named(data, tmp_path):
    folder = _peft_adapter(tmp_path / "a", _preset())
    config_file = folder / adapters.CONFIG_FILE
    good = config_file.read_text()
    config_file.write_text(good[:-10])
    with pytest.raises(ValueError, match=r"a/adapter_config.json: not valid JSON"):
        adapters.read(folder)
    config_file.write_text(good.replace('"r": ', '"r": 4, "r": ', 1))
    with pytest.raises(ValueError, match=r"adapter_config.json: key 'r' appears twice"):
        adapters.read(folder)
    config_file.write_text(good)
    weights = folder / adapters.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(tensorfile.IntegrityError, match=r"a/adapter_model.safetensors cannot be read: it is "
                                                        r"truncated or damaged"):
        adapters.read(folder)


def test_an_adapter_of_another_base_model_is_refused(data, tmp_path):
    preset = _preset()
    folder = _peft_adapter(tmp_path / "other", preset)
    cfg = json.loads((folder / adapters.CONFIG_FILE).read_text())
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B-Instruct"
    (folder / adapters.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"made for the base model 'meta-llama/Llama-3.2-1B-Instruct', but the "
                                         r"preset's model is 'tiny-llama'"):
        Learner.create(preset.replace(learner={"init_adapter": str(folder)}))
    assert adapters.same_model("HuggingFaceTB/SmolLM2-135M-Instruct", "models/SmolLM2-135M-Instruct")
    assert not adapters.same_model("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct")
    assert adapters.same_model(None, "tiny-llama")


def test_a_custom_loader_returning_none_is_named(tmp_path):
    datasets.register("returns-none", lambda folder, split: None)
    with pytest.raises(qa_records.DatasetFormatError, match=r"the loader registered for dataset 'returns-none' "
                                                          r"returned NoneType .* for .*, split 'dev'"):
        datasets.load("returns-none", tmp_path, "dev")


# --- datasets, JSON, modes, bank ----------------------------------------------------------

def test_an_empty_dataset_file_is_refused(tmp_path):
    (tmp_path / "dev.json").write_text("[]")
    with pytest.raises(qa_records.DatasetFormatError, match=r"dataset 'emptyqa', split 'dev' in .* holds no questions "
                                                          r"\(files: \['dev.json'\]\)"):
        datasets.load("emptyqa", tmp_path, "dev")


def test_two_files_for_one_split_are_refused(tmp_path):
    (tmp_path / "dev.json").write_text('[{"question": "q?", "answer": "a"}]')
    (tmp_path / "dev.jsonl").write_text('{"question": "q2?", "answer": "b"}\n')
    for name in ("myqa", "probe"):
        with pytest.raises(qa_records.DatasetFormatError, match=r"holds dev.json and dev.jsonl for one split"):
            datasets.load(name, tmp_path, "dev")


def test_duplicate_keys_in_preset_json_are_refused(tmp_path):
    """`"r": 4, "r": 64` was read as 64."""
    folder = tmp_path / "dup"
    folder.mkdir()
    for name in config.FILES.values():
        (folder / name).write_text((paths.preset_dir("tiny") / name).read_text())
    peft = (folder / "peft_config.json").read_text()
    (folder / "peft_config.json").write_text(peft.replace("{", '{"r": 4, "r": 64,', 1))
    with pytest.raises(config.ConfigError, match=r"dup/peft_config.json: key 'r' appears twice in one JSON object "
                                                 r"\(4, then 64\)"):
        config.load_preset(folder)
    variant = tmp_path / "var"
    variant.mkdir()
    (variant / "variant.json").write_text('{"base": "tiny", "train": {"seed": 1, "seed": 2}}')
    with pytest.raises(config.ConfigError, match=r"variant.json: key 'seed' appears twice"):
        config.load_preset(variant)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_training_files_follow_the_umask(data, umask):
    """checkpoint/state.safetensors and adapter/adapter_model.safetensors were 0600 under umask 022."""
    old = os.umask(umask)
    try:
        folder = paths.output_dir(f"integrity-modes-{umask:o}")
        train.train(folder.name, _preset(max_steps=2), data, overwrite=True)
    finally:
        os.umask(old)
    for name in (paths.META_STATE, "checkpoint/state.safetensors", "checkpoint/trainer_state.json",
                 "adapter/adapter_model.safetensors", "adapter/adapter_config.json", paths.TRAINING_LOG,
                 paths.TRAIN_SUMMARY):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    for name in ("checkpoint", "adapter"):
        assert (folder / name).stat().st_mode & 0o777 == 0o777 & ~umask, name


def test_a_leftover_manifest_temporary_is_removed_on_resume(run):
    """A kill just before the manifest's rename left `.manifest.json.*.tmp`, which resume did not clean."""
    folder = encode.encode(run, DATASET, "dev", scheme="fp32")
    stray = folder / ".manifest.json.abc123.tmp"
    stray.write_text("{")
    encode.encode(run, DATASET, "dev", scheme="fp32")
    assert not stray.exists()
    with reader.GradientBank.open(folder) as b:
        assert len(b) == 9


def test_storage_scheme_group_sizes_are_bounded():
    """`int4-g100000000` was accepted (16 values stored as 50 MB rows)."""
    assert schemes.parse("int4-g4096").group_size == 4096
    for name in ("int4-g100000000", "int8-g4104"):
        with pytest.raises(ValueError, match=r"group_size=\d+ must be a multiple of 8 from 8 to 4096"):
            schemes.parse(name)
