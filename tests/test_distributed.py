"""Several processes (accelerate launch, gloo, tiny model) give what one process gives; failures stop the job.

What is guaranteed, and so what is compared: exactly, whatever is deterministic (which questions, in which order,
with which passages; the files written and which rank wrote what; the step and task counts); within float
rounding, every float result. The ranks may run another thread count than this process (``launch.rank_threads``,
or the user's ``OMP_NUM_THREADS``) and see other batch neighbours, so their sums run in another order: the
tolerances are derived from the arithmetic (:mod:`regrad_lib.io.tolerance`), and generated text is compared only where
the greedy choice was no near tie. The module must pass with ``OMP_NUM_THREADS`` unset, 1 and 2.

Each launched job costs ~20 s of process start-up on a small CPU, so the module launches few of them: 2-process
training, 2-process evaluation, one job with a failing rank, 2-process encoding, and the refusal and timeout jobs.
"""

import csv
import itertools
import json
import math
import shutil
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from regrad_lib import config
from regrad_lib.answering import specs
from regrad_lib.bank import encode, on_disk, reader
from regrad_lib.bank.writer import BankWriter
from regrad_lib.core import lora
from regrad_lib.core.learner import Learner
from regrad_lib.evaluation import evaluate, results
from regrad_lib.io import (
    artifacts,
    checkpoint,
    distributed,
    paths,
    result_files,
    run_state,
    tolerance,
)
from regrad_lib.runner import launch
from regrad_lib.training import train

CITIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima"),
          ("Kenya", "Nairobi"), ("Chile", "Santiago"), ("Spain", "Madrid"), ("Norway", "Oslo"), ("Cuba", "Havana"),
          ("Ghana", "Accra"), ("Nepal", "Kathmandu"), ("Qatar", "Doha"), ("Fiji", "Suva"), ("Laos", "Vientiane"),
          ("Mali", "Bamako"), ("Oman", "Muscat"), ("Chad", "Ndjamena")]


def _records(pairs, offset=0, lonely=None):
    """QA records; ``lonely``: the index of a record whose question is the shortest and whose passages no other
    record retrieves."""
    out = []
    for i, (country, city) in enumerate(pairs):
        pid = 1000 + 3 * (offset + i)
        question = f"Which city is the seat of the government of {country} today?"
        out.append({"test_id": offset + i, "question": "Capital?" if i == lonely else question, "answers": [city],
                    "passages": [f"{city} is the capital and largest city of {country}.",
                                 f"{country} is a country. Its government sits in {city}.",
                                 f"The history of {city} goes back many centuries."],
                    "passage_ids": [str(pid), str(pid + 1), str(pid + 2)], "titles": [city, country, city],
                    "scores": [3.0, 2.0, 1.0]})
    return out


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    # 9 training tasks, 4 of them held out: batches of 4 then 1 (every second step leaves rank 1 without a task)
    artifacts.write_json(paths.augmented_file("dist-a", "train_all"), _records(CITIES[:5]))
    artifacts.write_json(paths.augmented_file("dist-b", "train_all"), _records(CITIES[5:9], offset=5))
    artifacts.write_json(paths.augmented_file("dist-a", "dev"), _records(CITIES, offset=100))       # 3 batches of 8
    artifacts.write_json(paths.augmented_file("dist-b", "dev"), _records(CITIES[:16], offset=200, lonely=15))
    return ["dist-a", "dist-b"]


def _settings(run):
    return train.TrainSettings(run=run, preset="tiny", train_datasets=["dist-a", "dist-b"], max_steps=5)


@pytest.fixture(scope="module")
def solo(data):
    """A 5-step run trained in this process (the reference) and its fp32 bank of the dist-a dev passages."""
    summary = launch.run(_settings("solo"))
    encode.encode("solo", "dist-a", "dev", scheme="fp32", batch_size=8)
    return summary


def _log(run):
    return run_state.read_training_log(run)


def _state(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("phi.", "alpha."))}


def test_two_processes_resume_one_and_train_the_same_trajectory(solo, monkeypatch, crash_on_call):
    """Steps 1-2 in this process (it then crashes, leaving the checkpoint of step 2), steps 3-5 by two processes
    that both resume from it: the log and the weights are the one-process run's."""
    crash_on_call(train, "meta_step", 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        launch.run(_settings("duo"))
    monkeypatch.undo()
    assert artifacts.read_json(checkpoint.folder(paths.output_dir("duo")) / checkpoint.STATE)["step"] == 2
    summary = launch.run(_settings("duo"), num_processes=2)
    assert summary["steps"] == 5 and summary["tasks"] == solo["tasks"] == 14
    one, two = _log("solo"), _log("duo")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]   # rank 0 wrote once
    drift, relative, values = _training_tolerances(one)
    for a, b in zip(one, two):
        for key in ("loss", "grad_norm", "eval_loss"):
            if a.get(key) is not None:
                # a logged loss: its own rounding, plus the weights' drift so far times the gradient (≤ ‖g‖·‖Δw‖)
                shift = max(r["grad_norm"] for r in one if r["kind"] == "train") * math.sqrt(values) * \
                    drift[a["step"]] if key != "grad_norm" else 0.0
                assert b[key] == pytest.approx(a[key], rel=relative, abs=shift), (a["step"], key)
        assert b.get("best") == a.get("best") and b.get("tasks_seen") == a.get("tasks_seen")
    assert {r["loss"] for r in one if r["kind"] == "train"} != {None} and len(two) == 5 + 4   # 5 steps, 4 evals
    for name in (f"{checkpoint.FOLDER}/{checkpoint.TENSORS}", paths.META_STATE):
        a, b = _state(paths.output_dir("solo") / name), _state(paths.output_dir("duo") / name)
        assert set(a) == set(b) and any(k.startswith("alpha.") for k in a)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=drift[5], msg=key)
    # training moved phi and alpha: the comparison is not between two untouched initial states
    start = Learner.create(_settings("x").config).state_dict()
    final = _state(paths.output_dir("duo") / checkpoint.FOLDER / checkpoint.TENSORS)
    assert all((final[k] - start[k]).abs().max() > 10 * drift[5] for k in final if not k.endswith("lora_B"))


def _training_tolerances(log: list[dict]) -> tuple[dict[int, float], float, int]:
    """({step: how far the weights may have drifted by then}, the relative rounding of one meta step's sums,
    the number of trained values) for the tiny preset (tolerance.meta_step_terms, tolerance.adam_drift)."""
    preset = config.load_preset("tiny")
    learner = Learner.create(preset)
    terms = tolerance.meta_step_terms(learner.model.config, preset.learner, preset.peft.r,
                                      preset.train.meta_batch_size)
    relative = tolerance.reorder_tolerance(terms, 1.0)
    rates, drift = [], {0: 0.0}
    for row in (r for r in log if r["kind"] == "train"):
        rates.append(max(row["lr"], row["alpha_lr"]))
        drift[row["step"]] = tolerance.adam_drift(relative, rates)
    return drift, relative, sum(v.numel() for v in learner.state_dict().values())


def test_two_processes_give_alpha_no_gradient_in_the_outer_loss_false_ablation(data, tmp_path):
    """The ablation never trains alpha: with two processes it keeps no gradient (so AdamW's weight decay, raised
    here to 0.5, leaves it alone) and phi follows the one-process trajectory."""
    preset = tmp_path / "tiny-plain-lm"
    shutil.copytree(paths.configs_dir() / "tiny", preset)
    for name, key, value in (("learner_config.json", "outer_loss", False), ("train_args.json", "weight_decay", 0.5)):
        values = json.loads((preset / name).read_text())
        values[key] = value
        (preset / name).write_text(json.dumps(values))

    def settings(run):
        return train.TrainSettings(run=run, preset=str(preset), train_datasets=data, max_steps=3)

    launch.run(settings("plain-solo"))
    launch.run(settings("plain-duo"), num_processes=2)
    start = Learner.create(settings("x").config).state_dict()
    one, two = _state(paths.meta_state_file("plain-solo")), _state(paths.meta_state_file("plain-duo"))
    alphas = [k for k in start if k.startswith("alpha.")]
    assert alphas and all(torch.equal(run[k], start[k]) for run in (one, two) for k in alphas)
    assert any(not torch.equal(two[k], start[k]) for k in two if k.startswith("phi."))
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)


def _copy_run(source, target):
    shutil.copytree(paths.output_dir(source), paths.output_dir(target), dirs_exist_ok=True)
    shutil.copytree(paths.bank_split_dir(3, source, "dist-a", "dev"), paths.bank_split_dir(3, target, "dist-a", "dev"),
                    dirs_exist_ok=True)


METHODS = ["closed_book", "rag", "regrad", "regrad_online", "shift", "no_update"]


def _logit_tolerance(learner: Learner, method: str) -> float:
    """How far a logit of ``method`` may move when the sums run in another order: one forward pass over the
    longest prompt and answer, after an online passage gradient for regrad_online (the bank methods read the
    same fp32 bank in both runs)."""
    cfg, lrn = learner.model.config, learner.preset.learner
    terms = tolerance.forward_terms(cfg, lrn.max_prompt_len + learner.preset.generation.max_new_tokens,
                                    learner.preset.peft.r)
    if specs.SPECS[method].update == "online":
        terms += tolerance.gradient_terms(cfg, lrn.bank_context_len, learner.preset.peft.r)
    return tolerance.reorder_tolerance(terms, tolerance.logit_magnitude(learner.model))


def _result_files(run: str) -> set[str]:
    root = paths.results_dir(run)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_two_processes_evaluate_as_one(solo):
    """Exactly: the files, the questions, their order and passages, the counts. Within the sums' rounding
    (twice a logit's tolerance for a mean token NLL): every answer NLL and the NLL columns. The generated text
    wherever the greedy choice was no near tie in either run (the smallest margin above twice a logit's
    tolerance), and the text scores (EM, F1, ...) where every text of the method is so compared."""
    _copy_run("solo", "duo-eval")
    one = launch.run(evaluate.EvaluateSettings(run="solo", datasets=["dist-a"], methods=METHODS, gammas=[0.0, 2.0],
                                               scheme="fp32"))
    two = launch.run(evaluate.EvaluateSettings(run="duo-eval", datasets=["dist-a"], methods=METHODS,
                                               gammas=[0.0, 2.0], scheme="fp32"), num_processes=2)
    assert _result_files("duo-eval") == _result_files("solo")
    assert len(one["summary"]) == len(METHODS) and len(one["sweeps"]) == 2
    learner = Learner.from_run("solo")
    logit = {m: _logit_tolerance(learner, m) for m in METHODS}
    all_texts_compared, compared = {}, 0
    for method in METHODS:
        rows = [result_files.method_predictions(run, "dist-a", method) for run in ("solo", "duo-eval")]
        assert len(rows[0]) == len(CITIES)
        clear = 0
        for a, b in zip(*rows):
            for key in ("test_id", "question", "answers", "passage_ids", "truncated_passages"):
                assert b[key] == a[key], (method, key)
            assert b["answer_nll"] == pytest.approx(a["answer_nll"], rel=0, abs=2 * logit[method]), method
            if min(a["min_margin"], b["min_margin"]) > 2 * logit[method]:
                assert (b["generated"], b["prediction"]) == (a["generated"], a["prediction"]), method
                clear += 1
        all_texts_compared[method] = clear == len(rows[0])
        compared += clear
    assert compared > len(CITIES)           # the comparison of texts is not empty
    for table, key in (("summary", ("dataset", "method")), ("sweeps", ("dataset", "method", "gamma", "topk"))):
        assert [tuple(r[k] for k in key) + (r["n"],) for r in two[table]] == \
            [tuple(r[k] for k in key) + (r["n"],) for r in one[table]]
        for a, b in zip(one[table], two[table]):
            # the files keep 4 decimals (evaluate._cell): two roundings differ by at most 1e-4 more
            assert b["nll"] == pytest.approx(a["nll"], rel=0, abs=2 * logit[a["method"]] + 1e-4)
            if table == "summary" and all_texts_compared[a["method"]]:
                assert [b[k] for k in ("em", "f1", "precision", "recall")] == \
                    [a[k] for k in ("em", "f1", "precision", "recall")]


def test_a_failing_rank_stops_the_job_with_its_error(solo):
    """The bank lacks the passages of the last question only; it is the shortest, so rank 1 (the second batch of
    two) alone meets it, while rank 0 waits for rank 1 in a collective."""
    _copy_run("solo", "broken")
    encode.encode("broken", "dist-b", "dev", scheme="fp32", batch_size=8, end=15)
    settings = evaluate.EvaluateSettings(run="broken", datasets=["dist-b"], methods=["regrad"], scheme="fp32")
    started = time.monotonic()
    with pytest.raises(launch.LaunchError) as error:
        launch.run(settings, num_processes=2)
    # bounded: far below the collective timeout (REGRAD_COLLECTIVE_TIMEOUT_S, 1800 s), so no rank waited on a
    # collective; the wall time itself (about 22 s on a quiet machine) is a measurement, not a test
    assert time.monotonic() - started < 600
    message = str(error.value)
    assert "evaluate failed on rank 1 of 2" in message
    assert "KeyError" in message and "passage id '1645' is not in the Gradient Bank" in message
    assert "Traceback of rank 1" in message and "sum_many" in message
    assert not results.method_files("broken", "dist-b", "regrad")[1].exists()   # nothing half-written


def _sample_records(n):
    """``n`` records with 3 distinct passages each from the bundled mini-Wikipedia (real passage lengths)."""
    with paths.sample_corpus().open(encoding="utf-8", newline="") as f:
        rows = [r for r in itertools.islice(csv.reader(f, delimiter="\t"), 1, 3 * n + 1)]
    return [{"test_id": i, "question": f"What about {rows[3 * i][2]}?", "answers": [rows[3 * i][2]],
             "passages": [r[1] for r in rows[3 * i:3 * i + 3]], "passage_ids": [r[0] for r in rows[3 * i:3 * i + 3]],
             "titles": [r[2] for r in rows[3 * i:3 * i + 3]], "scores": [1.0] * 3} for i in range(n)]


@pytest.fixture(scope="module")
def reference_bank(solo):
    """Dataset dist-c (450 sample passages) and its bf16 bank encoded by one process (run enc1, solo's weights)."""
    artifacts.write_json(paths.augmented_file("dist-c", "dev"), _sample_records(150))
    shutil.copytree(paths.output_dir("solo"), paths.output_dir("enc1"), dirs_exist_ok=True)
    return launch.run(encode.EncodeSettings(run="enc1", datasets=["dist-c"], batch_size=4, scheme="bf16"))["dist-c"][
        "bf16"]


def _gradient_tolerance(rows: torch.Tensor, layout) -> torch.Tensor:
    """Per value: how far a passage gradient may move when the sums run in another order (tolerance.gradient_terms
    over ``bank_context_len`` tokens, the magnitude of each LoRA tensor's largest value in the bank)."""
    preset = config.load_preset("tiny")
    terms = tolerance.gradient_terms(Learner.from_run("solo").model.config, preset.learner.bank_context_len,
                                     preset.peft.r)
    atol, offset = torch.empty(rows.shape[1]), 0
    for _, shape in layout:
        n = shape[0] * shape[1]
        atol[offset:offset + n] = tolerance.reorder_tolerance(terms, float(rows[:, offset:offset + n].abs().max()))
        offset += n
    return atol


def _same_bank(folder, reference):
    """Same ids as ``reference``, every gradient equal within the sums' rounding and the bf16 storage (two
    values that close may round to neighbouring bf16 numbers: one bf16 eps apart), manifest and shards valid."""
    with reader.GradientBank.open(folder) as got, reader.GradientBank.open(reference) as want:
        assert sorted(got.ids()) == sorted(want.ids()) and len(got) == 450
        assert got.verify()["entries"] == 450
        ids = want.ids()
        a, b = got.rows(ids).float(), want.rows(ids).float()
        atol = _gradient_tolerance(b, want.layout)
        assert ((a - b).abs() <= tolerance.eps(torch.bfloat16) * b.abs() + atol).all()
        assert float(atol.max()) < 0.01 * float(b.abs().max())     # far below a passage's own gradient
        assert got.manifest["meta_hash"] == want.manifest["meta_hash"]
    assert not paths.bank_parts_dir(folder).exists()
    return got.manifest


def test_two_processes_encode_the_bank_of_one(reference_bank):
    shutil.copytree(paths.output_dir("solo"), paths.output_dir("enc2"), dirs_exist_ok=True)
    banks = launch.run(encode.EncodeSettings(run="enc2", datasets=["dist-c"], batch_size=4, scheme="bf16"),
                       num_processes=2)
    manifest = _same_bank(banks["dist-c"]["bf16"], reference_bank)
    assert {s["file"].split("-shard")[0] for s in manifest["shards"]} == {"a001-r0", "a001-r1"}   # one part each


def test_an_encode_killed_in_one_rank_resumes_with_one_process(reference_bank):
    """Rank 1 is killed once it has written a shard: no manifest (nothing opens or verifies as a bank), and
    one process then finishes the job from the parts: the bank of one process."""
    import psutil

    shutil.copytree(paths.output_dir("solo"), paths.output_dir("enc-kill"), dirs_exist_ok=True)
    row_bytes = reader.storage_scheme("bf16").row_bytes(lora.layout(Learner.from_run("solo").phi))
    settings = encode.EncodeSettings(run="enc-kill", datasets=["dist-c"], batch_size=4, shard_bytes=4 * row_bytes,
                                     scheme="bf16")
    folder = paths.bank_dir(3, "enc-kill", "dist-c", "dev", "bf16")
    proc = subprocess.Popen(launch.command("encode", settings, 2, None), cwd=paths.repo_root(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (paths.bank_parts_dir(folder) / "a001-r1" / on_disk.MANIFEST).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "rank 1 never wrote a shard"
            time.sleep(0.05)
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True)
                 if p.environ().get("RANK") == "1" and "regrad_lib.runner.launch" in " ".join(p.cmdline())]
        assert len(ranks) == 1
        ranks[0].kill()
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (folder / on_disk.MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        reader.GradientBank.open(folder)
    with reader.GradientBank.open(paths.bank_parts_dir(folder) / "a001-r1") as part:
        assert 0 < len(part) < 225          # rank 1 had done some of its 225 passages, not all
    encode.encode("enc-kill", "dist-c", "dev", batch_size=4, scheme="bf16")        # one process, resumes
    manifest = _same_bank(folder, reference_bank)
    assert {"a001-r1", "a002-r0"} <= {s["file"].split("-shard")[0] for s in manifest["shards"]}


# --- single-process helpers (no launcher) ------------------------------------------------------------------

def test_one_process_helpers_are_the_identity():
    assert not distributed.launched() and distributed.job() == distributed.Job(0, 1, 0)
    assert distributed.gather([1, 2]) == [[1, 2]] and distributed.broadcast("x") == "x"
    assert distributed.merge_turns(["a", "b"], 2) == ["a", "b"] and distributed.turns(3) == range(0, 3)
    assert distributed.on_main(lambda a, b: a + b, 2, b=3) == 5
    assert distributed.local_device("cuda") == "cuda"
    t = torch.ones(3)
    distributed.sum_([t])
    assert torch.equal(t, torch.ones(3))


@pytest.mark.parametrize("n,size", [(9, 2), (1, 2), (4, 4), (10, 3), (0, 2)])
def test_spans_cover_every_item_once_near_equally(n, size):
    parts = [distributed.span(n, rank, size) for rank in range(size)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_settings_round_trip_through_the_command_line(data):
    settings = train.TrainSettings(run="123", preset="tiny", train_datasets=["dist-a", "dist-b"], max_steps=3,
                                   blind_context=False)
    name, parsed, result = launch.parse_args(["train", *launch.to_argv(settings)])
    assert name == "train" and result is None and parsed == settings and parsed.run == "123"
    _, typed, _ = launch.parse_args(["train", "--run", "r", "--preset", "tiny", "--train-datasets", "dist-a,dist-b",
                                     "--max-steps", "2", "--seed", "null"])
    assert typed.train_datasets == ["dist-a", "dist-b"] and typed.max_steps == 2 and typed.seed is None
    with pytest.raises(SystemExit):
        launch.parse_args(["train", "--run", "r", "--preset", "tiny", "--train-datasets", "dist-a", "--max-stpes", "2"])
    cmd = launch.command("train", settings, 2, None)
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("-m", 3) + 1] == "regrad_lib.runner.launch"
    assert str(paths.resolve(launch.LOCAL_CONFIG)) in cmd
    with pytest.raises(ValueError, match="num_processes = 0 must be >= 1"):
        launch.run(settings, num_processes=0)
    with pytest.raises(FileNotFoundError, match="accelerate_config='nope.yaml'"):
        launch.run(settings, accelerate_config="nope.yaml")
    with pytest.raises(TypeError, match="not the settings of a step"):
        launch.run({"run": "x"})


def test_failure_message_names_the_root_cause_rank():
    output = "\n".join([
        "[rank0]: Traceback (most recent call last):", "[rank0]:   File 'x.py', line 3, in f",
        "[rank0]: RuntimeError: Connection closed by peer", "[rank1]: Traceback (most recent call last):",
        "[rank1]:   File 'y.py', line 9, in g", "[rank1]: ValueError: the real problem",
        "Root Cause (first observed failure):", "[0]:", "  rank      : 1 (local_rank: 1)", "  exitcode  : 1"])
    message = launch.failure(output, "train", 2, 1)
    assert message.startswith("train failed on rank 1 of 2 (exit code 1): ValueError: the real problem")
    assert "File 'y.py', line 9" in message and "Connection closed" not in message
    assert "before any rank reported" in launch.failure("accelerate: bad config\n", "train", 2, 1)
    recorded = "\n".join([   # raised before the process group existed: only the recorder's copy in the summary
        "Root Cause (first observed failure):", "[0]:", "  rank      : 0 (local_rank: 0)", "  exitcode  : 1",
        "  traceback : Traceback (most recent call last):", "    File 'd.py', line 69, in init",
        "  ValueError: FSDP is not supported", "", "=" * 60])
    message = launch.failure(recorded, "encode", 2, 1)
    assert message.startswith("encode failed on rank 0 of 2 (exit code 1): ValueError: FSDP is not supported")
    assert "  File 'd.py', line 69, in init" in message
    json.dumps(message)


PHI = {"m.0.lora_A": torch.zeros(2, 3), "m.0.lora_B": torch.zeros(4, 2)}


def _part(folder, ids, meta_hash="meta-1"):
    head = on_disk.header(model="tiny-llama", model_id="tiny-llama", model_revision=None, preset="tiny", phi=PHI,
                        meta_hash=meta_hash, scheme="fp32")
    writer = BankWriter.open(folder, head, shard_bytes=2 * lora.numel(PHI) * 4)
    writer.append(ids, torch.arange(len(ids) * lora.numel(PHI), dtype=torch.float32).view(len(ids), -1))
    writer.close()
    return head


def test_parts_merge_once_and_never_mix_weights(tmp_path):
    target = tmp_path / "dev_all"
    parts = paths.bank_parts_dir(target)
    head = _part(parts / "a001-r0", ["a", "b", "c"])
    _part(parts / "a001-r1", ["d"])
    assert not (target / on_disk.MANIFEST).exists()          # parts alone are no bank
    attempt, done = encode._prepare_parts(target, head, overwrite=False)
    assert (attempt, done) == ("a002", {"a", "b", "c", "d"})
    writer = BankWriter.open(target, head)
    assert writer.adopt(parts / "a001-r0") == 3 and writer.adopt(parts / "a001-r0") == 0   # a rerun adds nothing
    assert writer.adopt(parts / "a001-r1") == 1
    writer.close()
    with reader.GradientBank.open(target) as merged:
        assert sorted(merged.ids()) == list("abcd") and merged.verify()["entries"] == 4
        assert torch.equal(merged.rows(["d"])[0], torch.arange(lora.numel(PHI), dtype=torch.float32))
    _part(parts / "a002-r0", ["e"], meta_hash="meta-2")
    with pytest.raises(on_disk.BankMismatchError, match=r"a002-r0 was encoded with other settings.*overwrite=True"):
        encode._prepare_parts(target, head, overwrite=False)
    with pytest.raises(on_disk.BankMismatchError, match="meta_hash"):
        BankWriter.open(target, head).adopt(parts / "a002-r0")
    assert encode._prepare_parts(target, head, overwrite=True) == ("a001", set())
    assert not parts.exists() and not (target / on_disk.MANIFEST).exists() and not list(target.glob("*.safetensors"))
