import copy

import pytest
import torch

from regrad_lib import config
from regrad_lib.core import lora, modeling


def test_missing_model_names_the_three_sources(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"local preset models.*local folder.*hub id 'no-such/model-xyz'"):
        modeling.load("no-such/model-xyz")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        modeling.prepare(str(tmp_path))


def test_attach_targets_only_the_configured_layers(tiny):
    model = copy.deepcopy(tiny[0])
    peft = config.load_preset("tiny").peft
    names = lora.attach(model, peft)
    assert len(names) == len(peft.target_modules) * len(peft.layers_to_transform)
    assert all(f".layers.{i}." in n for n in names for i in [int(n.split(".layers.")[1].split(".")[0])])
    assert {int(n.split(".layers.")[1].split(".")[0]) for n in names} == set(peft.layers_to_transform)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_lora_starts_as_identity_and_disabled_is_base(tiny):
    base, tok = tiny
    model = copy.deepcopy(base)
    lora.attach(model, config.load_preset("tiny").peft)
    ids = torch.tensor([tok("Paris is a city").input_ids])
    with torch.no_grad():
        ref = base(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, ref)  # B = 0 at initialisation
        for p in lora.parameters(model).values():
            p.add_(0.1)
        assert not torch.allclose(model(input_ids=ids).logits, ref)
        with lora.disabled(model):
            assert torch.equal(model(input_ids=ids).logits, ref)


def test_flatten_round_trip(tiny):
    model = copy.deepcopy(tiny[0])
    lora.attach(model, config.load_preset("tiny").peft)
    phi = lora.parameters(model)
    vec = lora.flatten(phi)
    assert vec.shape == (lora.numel(phi),)
    back = lora.unflatten(vec, lora.layout(phi))
    assert all(torch.equal(back[n], phi[n]) for n in phi)


def test_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    from regrad_lib.core import tiny_model
    other = tiny_model.ensure_tiny_model(tmp_path / "again")
    assert (other / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()


@pytest.mark.demo_model
def test_demo_model_answers_a_simple_question():
    from regrad_lib.data import prompts
    from regrad_lib.io import paths
    if not (paths.repo_root() / "models" / "SmolLM2-135M-Instruct" / "config.json").exists():
        pytest.skip("demo model not prepared (make model)")
    model, tok = modeling.load(str(paths.repo_root() / "models" / "SmolLM2-135M-Instruct"))
    ids = torch.tensor([prompts.prompt_ids(tok, "What is the capital of France?")])
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "paris" in tok.decode(out[0, ids.shape[1]:]).lower()
