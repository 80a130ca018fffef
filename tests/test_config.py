import json

import pytest

from regrad_lib import config
from regrad_lib.io import paths


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
    with pytest.raises(config.ConfigError,
                       match=r"train_args\.json.*unknown key 'learnig_rate'.*Did you mean: learning_rate"):
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
    ("cpt_config.json", {"weights": "adapter"}, "weights = 'adapter' is not allowed"),
    ("cpt_config.json", {"chunks": 0}, "chunks"),
    ("cpt_config.json", {"learning_rate": "1e-4"}, "learning_rate"),
    ("cpt_config.json", {"chunk": 4}, "unknown key 'chunk'. Did you mean: chunks"),
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


# --- presets that must be refused: non-finite numbers, variants that loop or name no preset ---------------------------

@pytest.mark.parametrize("filename,key", [("learner_config.json", "gamma"), ("train_args.json", "learning_rate"),
                                          ("learner_config.json", "init_alpha"), ("train_args.json", "max_grad_norm"),
                                          ("train_args.json", "adam_beta1"), ("peft_config.json", "lora_alpha")])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_file_are_refused_naming_file_and_key(tmp_path, filename, key, literal):
    _write(tmp_path)
    path = tmp_path / filename
    data = json.loads(path.read_text())
    data[key] = "@"
    path.write_text(json.dumps(data).replace('"@"', literal))   # json.loads reads these as nan / inf
    with pytest.raises(config.ConfigError, match=rf"{filename}: key '{key}' must be a finite number"):
        config.load_preset(tmp_path)


@pytest.mark.parametrize("section,key", [("learner", "gamma"), ("train", "learning_rate"), ("learner", "init_alpha"),
                                         ("train", "max_grad_norm"), ("train", "eta_min"), ("train", "adam_epsilon")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_overrides_and_dataclasses_are_refused(section, key, value):
    with pytest.raises(config.ConfigError, match=rf"overrides \[{section}\]: key '{key}' must be a finite number"):
        config.load_preset("tiny", {section: {key: value}})
    cls = {"learner": config.LearnerConfig, "train": config.TrainArgs}[section]
    with pytest.raises(config.ConfigError, match=rf"{cls.__name__}.{key} = -?(nan|inf) must be a finite number"):
        cls(**{key: value})


def test_check_number_is_the_rule_for_gamma_elsewhere():
    config.check_number(0, "gamma", allow_zero=True)
    for bad, why in [(-1.0, ">= 0"), (float("nan"), "a finite number"), (float("inf"), "a finite number"),
                     ("1", "a number"),
                     (True, "a number")]:
        with pytest.raises(config.ConfigError, match=rf"gamma = .* must be {why}"):
            config.check_number(bad, "gamma", allow_zero=True)


def test_adam_betas_are_checked():
    with pytest.raises(config.ConfigError, match=r"adam_beta2 = 1.0 must be in \[0, 1\)"):
        config.TrainArgs(adam_beta2=1.0)


def test_variant_whose_base_is_itself_or_a_loop_names_the_files(tmp_path):
    (tmp_path / "variant.json").write_text(json.dumps({"base": str(tmp_path)}))
    with pytest.raises(config.ConfigError, match=r"variant.json: key 'base' = .* leads back to itself"):
        config.load_preset(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "variant.json").write_text(json.dumps({"base": str(b)}))
    (b / "variant.json").write_text(json.dumps({"base": str(a)}))
    with pytest.raises(config.ConfigError, match=r"b/variant.json: key 'base' .* leads back to itself \(.*a/variant"
                                                 r".json -> .*b/variant.json -> .*a/variant.json\)"):
        config.load_preset(a)


def test_variant_with_a_missing_or_unnamed_base_names_the_variant_file(tmp_path):
    (tmp_path / "variant.json").write_text(json.dumps({"base": "tinny"}))
    with pytest.raises(config.ConfigError, match=r"variant.json: key 'base': Unknown preset 'tinny'.*Did you mean"):
        config.load_preset(tmp_path)
    (tmp_path / "variant.json").write_text(json.dumps({"learner": {}}))
    with pytest.raises(config.ConfigError, match=r"variant.json: needs a key 'base'"):
        config.load_preset(tmp_path)


def test_config_files_accept_a_bom_and_name_bytes_that_are_not_utf8(tmp_path):
    _write(tmp_path)
    path = tmp_path / "train_args.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert config.load_preset(tmp_path).train == config.load_preset("tiny").train
    path.write_bytes(path.read_bytes().replace(b'"seed"', b'"s\xe9ed"'))
    with pytest.raises(config.ConfigError, match=r"train_args.json: line \d+: not UTF-8 text \(byte 0xe9"):
        config.load_preset(tmp_path)


# --- the cpt section (continual post-training's settings) -------------------------------------------------------------

def test_the_cpt_section_is_optional_and_read_where_present(tmp_path):
    _write(tmp_path)
    (tmp_path / "cpt_config.json").unlink()                 # a run trained before the section existed
    assert config.load_preset(tmp_path).cpt == config.CptConfig()
    _write(tmp_path, **{"cpt_config.json": {"chunks": 6, "weights": "full"}})
    assert (config.load_preset(tmp_path).cpt.chunks, config.load_preset(tmp_path).cpt.weights) == (6, "full")
    assert config.load_preset("tiny", {"cpt": {"learning_rate": 0.5}}).cpt.learning_rate == 0.5


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct",
                                  "llama-3.1-8b-instruct"])
def test_every_model_preset_states_its_cpt_settings(name):
    assert (paths.preset_dir(name) / "cpt_config.json").is_file()


def test_cpt_settings_are_not_part_of_the_training_request():
    from regrad_lib.training import run_folder

    a, b = config.load_preset("tiny"), config.load_preset("tiny", {"cpt": {"chunks": 9}})
    assert run_folder.request_of(a, ["popqa"], "train_all") == run_folder.request_of(b, ["popqa"], "train_all")
    assert "cpt" not in run_folder.request_of(a, ["popqa"], "train_all")["preset"]
