import json

import pytest

from regrad_lib import config


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
                                  "llama-3.1-8b-instruct"])
def test_every_preset_loads(name):
    preset = config.load_preset(name)
    assert preset.name == name
    assert preset.learner.alpha_mode == "tie" and preset.learner.init_alpha == 1e-2


def test_public_1b_defaults():
    p = config.load_preset("llama-3.2-1b-instruct")
    assert (p.peft.r, p.peft.lora_alpha, p.peft.layers_to_transform) == (16, 32, list(range(8, 16)))
    assert (p.train.learning_rate, p.train.meta_batch_size, p.train.max_grad_norm) == (4e-4, 16, 0.5)
    assert (p.train.warmup_ratio, p.train.warmup_start_factor, p.train.seed) == (0.1, 0.01, 42)
    assert p.generation.max_new_tokens == 20 and p.learner.max_context_len == 1536
    # prompts comparable with the public code: the passage text alone, the instruction-only frame
    assert (p.learner.passage_format, p.learner.prompt_style, p.learner.chat_date) == ("text", "instruct",
                                                                                       "26 Jul 2024")


def test_the_run_configs_record_the_prompt_settings(tmp_path):
    config.load_preset("tiny").save(tmp_path)
    saved = json.loads((tmp_path / "learner_config.json").read_text())
    assert {"passage_format", "prompt_style", "chat_date"} <= set(saved)


def _write(folder, **changes):
    base = config.load_preset("tiny")
    base.save(folder)
    for filename, diff in changes.items():
        path = folder / filename
        data = json.loads(path.read_text())
        data.update(diff)
        path.write_text(json.dumps(data))
    return folder


def test_unknown_key_names_file_and_key(tmp_path):
    _write(tmp_path, **{"train_args.json": {"learnig_rate": 1.0}})
    with pytest.raises(config.ConfigError, match=r"train_args\.json.*unknown key 'learnig_rate'.*Did you mean: learning_rate"):
        config.load_preset(tmp_path)


@pytest.mark.parametrize("filename,diff,pattern", [
    ("learner_config.json", {"alpha_mode": "tied"}, "alpha_mode"),
    ("train_args.json", {"mixed_precision": "fp8"}, "mixed_precision"),
    ("train_args.json", {"mixed_precision": "fp16"}, "fp16.*loss scaling"),
    ("learner_config.json", {"passage_format": "title"}, "passage_format"),
    ("learner_config.json", {"prompt_style": "fewshot"}, "prompt_style"),
    ("learner_config.json", {"chat_date": " "}, "chat_date"),
    ("train_args.json", {"meta_batch_size": 0}, "meta_batch_size"),
    ("train_args.json", {"meta_batch_size": "16"}, "meta_batch_size"),
    ("peft_config.json", {"lora_dropout": 0.1}, "lora_dropout"),
    ("generation_config.json", {"do_sample": True}, "do_sample"),
])
def test_bad_values_are_named(tmp_path, filename, diff, pattern):
    _write(tmp_path, **{filename: diff})
    with pytest.raises(config.ConfigError, match=pattern) as e:
        config.load_preset(tmp_path)
    assert filename in str(e.value)


def test_variant_overrides_a_preset(tmp_path):
    (tmp_path / "variant.json").write_text(json.dumps({"base": "tiny", "learner": {"alpha_mode": "full"}}))
    p = config.load_preset(tmp_path)
    assert p.learner.alpha_mode == "full" and p.peft.r == config.load_preset("tiny").peft.r


def test_overrides_and_unknown_preset():
    assert config.load_preset("tiny", {"train": {"max_steps": 3}}).train.max_steps == 3
    with pytest.raises(config.ConfigError, match="Did you mean: tiny"):
        config.load_preset("tinny")


def test_save_round_trip(tmp_path):
    p = config.load_preset("smollm2-135m-instruct")
    p.save(tmp_path)
    assert config.load_preset(tmp_path).to_dict() == {**p.to_dict(), "name": tmp_path.name}
