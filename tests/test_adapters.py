"""PEFT adapters out and in: peft computes our logits from our export, a warm start reproduces phi, mismatches
are refused naming what differs, and the modules a preset targets are the ones peft targets."""

import copy
import json

import pytest
import torch

from regrad_lib import config, testing
from regrad_lib.answering import methods
from regrad_lib.bank import encode, reader
from regrad_lib.core import adapters, lora, modeling
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate
from regrad_lib.io import artifacts, paths

RUN, DATASET = "peft-run", "peftqa"
RECORDS = [{"test_id": i, "question": f"What is the capital of {c}?", "answers": [city],
            "passages": [f"{city} is the capital of {c}.", f"{c} lies in Europe.", f"{city} is an old city."],
            "passage_ids": [f"{i}a", f"{i}b", f"{i}c"], "titles": [city, c, city], "scores": [3.0, 2.0, 1.0]}
           for i, (c, city) in enumerate([("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")])]


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    """A saved 'trained' tiny run (non-zero B, alpha 0.5), its PEFT adapter and an fp32 bank of one dev file."""
    learner = testing.saved_trained_run(RUN, config.load_preset("tiny"), seed=5)
    artifacts.write_json(paths.augmented_file(DATASET, "dev"), RECORDS)
    encode.encode(RUN, DATASET, "dev", scheme="fp32", learner=learner, overwrite=True)
    return learner, adapters.export_run(RUN)


def _ids(learner):
    return torch.tensor([learner.tokenizer("Paris is the capital and most populous city of France.").input_ids])


def _peft_logits(learner, folder, ids):
    from peft import PeftModel

    base, _ = modeling.load(learner.preset.learner.model_name_or_path)
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(folder)).eval()(input_ids=ids).logits


def test_peft_loads_phi_with_our_logits(run):
    learner, folder = run
    assert folder == paths.adapter_dir(RUN)
    saved = json.loads((folder / adapters.CONFIG_FILE).read_text())
    peft = learner.preset.peft
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"]) == ("LORA", peft.r, peft.lora_alpha)
    assert sorted(saved["target_modules"]) == sorted(peft.target_modules)
    assert saved["layers_to_transform"] == peft.layers_to_transform and saved["task_type"] == "CAUSAL_LM"
    ids = _ids(learner)
    with torch.no_grad():
        ours = learner.model(input_ids=ids).logits
        with lora.disabled(learner.model):
            base = learner.model(input_ids=ids).logits
    theirs = _peft_logits(learner, folder, ids)
    assert (ours - base).abs().max() > 1e-2                      # the LoRA does change the logits
    assert (ours - theirs).abs().max() <= 1e-6


def test_warm_start_round_trip(run):
    learner, folder = run
    warm = Learner.create(learner.preset.replace(learner={"init_adapter": str(folder)}))
    assert all(torch.equal(warm.phi[n], learner.phi[n]) for n in learner.phi)
    fresh = Learner.create(learner.preset)
    assert any(not torch.equal(fresh.phi[n], learner.phi[n]) for n in learner.phi)
    # a reopened run takes phi from its own meta_state, never from init_adapter
    assert Learner.from_run(RUN).meta_hash() == learner.meta_hash()


def test_question_adapter_from_bank_and_online(run):
    learner, _ = run
    task = evaluate.load_tasks(DATASET)[1]
    with reader.open_bank(3, RUN, DATASET, "dev", "fp32", learner=learner) as store:
        from_bank = methods.export_question(learner, task, paths.question_adapter_dir(RUN, "q1-bank"), bank=store,
                                             gamma=2.0, run=RUN)
    online = methods.export_question(learner, task, paths.question_adapter_dir(RUN, "q1-online"), gamma=2.0)
    info = json.loads((from_bank / adapters.INFO_FILE).read_text())["config"]
    assert (info["gamma"], info["gradients"], info["passage_ids"]) == (2.0, "bank", ["1a", "1b", "1c"])
    weights = methods.question_weights(learner, task, gamma=2.0)
    _, exported = adapters.read(online)
    assert all(torch.equal(exported[n], weights[n]) for n in weights)
    _, banked = adapters.read(from_bank)
    assert all(torch.allclose(banked[n], weights[n], atol=1e-6) for n in weights)
    assert any(not torch.equal(weights[n], learner.phi[n]) for n in weights)   # phi'_q is not phi
    ids = _ids(learner)
    with torch.no_grad(), lora.use(learner.model, weights):
        ours = learner.model(input_ids=ids).logits
    assert (ours - _peft_logits(learner, online, ids)).abs().max() <= 1e-6


@pytest.mark.parametrize("change, message", [
    ({"peft": {"r": 8, "lora_alpha": 16}}, r"rank r=4, but the preset's peft_config.json has r=8"),
    ({"peft": {"lora_alpha": 4}}, r"lora_alpha=8 \(scaling 2\), but the preset's peft_config.json has lora_alpha=4"),
    ({"peft": {"layers_to_transform": [1, 2, 3]}}, r"no LoRA weights for module model\.layers\.1\.mlp\.down_proj"),
    ({"peft": {"target_modules": ["gate_proj"]}}, r"LoRA weights for module model\.layers\.2\.mlp\.down_proj .*does "
                                                  r"not target"),
])
def test_mismatched_adapter_is_refused(run, change, message):
    _, folder = run
    preset = config.load_preset("tiny", change).replace(learner={"init_adapter": str(folder)})
    with pytest.raises(ValueError, match=message):
        Learner.create(preset)


def test_foreign_tensors_and_missing_files_are_refused(run, tmp_path):
    learner, folder = run
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found: a PEFT LoRA adapter folder holds"):
        adapters.read(tmp_path)
    from safetensors.torch import load_file, save_file

    (tmp_path / adapters.CONFIG_FILE).write_text((folder / adapters.CONFIG_FILE).read_text())
    tensors = load_file(str(folder / adapters.WEIGHTS_FILE))
    key = next(iter(tensors))
    save_file({**tensors, key.replace("lora_A", "lora_magnitude_vector"): tensors[key].clone()},
              str(tmp_path / adapters.WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"lora_magnitude_vector.weight' is not a LoRA weight"):
        adapters.read(tmp_path)
    save_file({**tensors, key: tensors[key][:, :-1].contiguous()}, str(tmp_path / adapters.WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"down_proj.lora_A.weight has shape \(4, 127\), the model.s LoRA needs "
                                         r"\(4, 128\)"):
        adapters.load_into(copy.deepcopy(learner.model), tmp_path, learner.preset.peft)


@pytest.mark.parametrize("peft", [
    {"target_modules": ["gate_proj", "up_proj", "down_proj"], "layers_to_transform": [2, 3]},
    {"target_modules": ["q_proj", "mlp.up_proj"], "layers_to_transform": 1, "layers_pattern": "layers"},
    {"target_modules": ["v_proj"], "layers_to_transform": [0, 3], "layers_pattern": ["h", "layers"]},
    {"target_modules": r".*\.(0|3)\.mlp\.(gate|down)_proj", "layers_to_transform": None},
    {"target_modules": ["o_proj"]},
])
def test_targets_are_the_modules_peft_targets(tiny, peft):
    from peft import get_peft_model

    preset = config.load_preset("tiny", {"peft": peft})
    ours = lora.attach(copy.deepcopy(tiny[0]), preset.peft)
    model = get_peft_model(copy.deepcopy(tiny[0]), adapters.lora_config(preset.peft))
    theirs = sorted(n[len(adapters.PREFIX):-len(".lora_A.default")] for n, _ in model.named_modules()
                    if n.endswith(".lora_A.default"))
    assert sorted(ours) == theirs and ours


def test_layers_pattern_that_matches_nothing_is_an_error(tiny):
    preset = config.load_preset("tiny", {"peft": {"layers_pattern": "h"}})
    with pytest.raises(ValueError, match=r"No linear layer matches .*layers_pattern=h"):
        lora.attach(copy.deepcopy(tiny[0]), preset.peft)


@pytest.mark.parametrize("init", [True, False, "gaussian"])
def test_init_lora_weights_as_peft_initialises(tiny, init):
    peft = config.load_preset("tiny", {"peft": {"init_lora_weights": init}}).peft
    model = copy.deepcopy(tiny[0])
    lora.attach(model, peft)
    a = torch.cat([p.flatten() for n, p in lora.parameters(model).items() if n.endswith("lora_A")])
    b = torch.cat([p.flatten() for n, p in lora.parameters(model).items() if n.endswith("lora_B")])
    assert bool(b.abs().sum() > 0) is (init is False)           # only False starts as a non-identity LoRA
    bound = 1 / 64 ** 0.5                                         # kaiming_uniform(a=sqrt(5)) on 64 inputs
    if init == "gaussian":
        assert a.std().item() == pytest.approx(1 / peft.r, rel=0.15) and a.abs().max() > bound
    else:
        assert a.abs().max() <= bound
