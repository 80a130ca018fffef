"""Several processes (accelerate launch, gloo, tiny model) give what one process gives; failures stop the job.

Each launched job costs ~20 s of process start-up on a small CPU, so the module launches few of them: 2-process
training, 2-process evaluation, one job with a failing rank (and 2-process encoding in test_encode_sharded).
"""

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

from regrad_lib import artifacts, checkpoint, distributed, encode, evaluate, launch, paths, train
from regrad_lib.learner import META_STATE, Learner

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
    # 9 training tasks, 4 of them held out: batches of 4 then 1 (the second step leaves rank 1 without a task)
    artifacts.write_json(paths.augmented_file("dist-a", "train_all"), _records(CITIES[:5]))
    artifacts.write_json(paths.augmented_file("dist-b", "train_all"), _records(CITIES[5:9], offset=5))
    artifacts.write_json(paths.augmented_file("dist-a", "dev"), _records(CITIES, offset=100))       # 3 batches of 8
    artifacts.write_json(paths.augmented_file("dist-b", "dev"), _records(CITIES[:16], offset=200, lonely=15))
    return ["dist-a", "dist-b"]


def _settings(run):
    return train.TrainSettings(run=run, preset="tiny", train_datasets=["dist-a", "dist-b"], max_steps=3)


@pytest.fixture(scope="module")
def solo(data):
    """A 3-step run trained in this process (the reference) and its fp32 bank of the dist-a dev passages."""
    summary = launch.run(_settings("solo"))
    encode.encode("solo", "dist-a", "dev", dtype="fp32", batch_size=8)
    return summary


def _log(run):
    return train.read_log(run)


def _state(path):
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("phi.", "alpha."))}


def test_two_processes_train_the_same_trajectory_as_one(solo):
    summary = launch.run(_settings("duo"), num_processes=2)
    assert summary["steps"] == 3 and summary["tasks"] == solo["tasks"] == 9
    one, two = _log("solo"), _log("duo")
    assert [(r["kind"], r["step"]) for r in two] == [(r["kind"], r["step"]) for r in one]   # rank 0 wrote once
    for a, b in zip(one, two):
        for key in ("loss", "grad_norm", "eval_loss"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
        assert b.get("best") == a.get("best") and b.get("tasks_seen") == a.get("tasks_seen")
    assert {r["loss"] for r in one if r["kind"] == "train"} != {None}
    for name in (f"{checkpoint.FOLDER}/{checkpoint.TENSORS}", META_STATE):
        a, b = _state(paths.output_dir("solo") / name), _state(paths.output_dir("duo") / name)
        assert set(a) == set(b) and any(k.startswith("alpha.") for k in a)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    # training moved phi and alpha: the comparison is not between two untouched initial states
    start = Learner.create(_settings("x").config).state_dict()
    final = _state(paths.output_dir("duo") / checkpoint.FOLDER / checkpoint.TENSORS)
    assert all((final[k] - start[k]).abs().max() > 1e-6 for k in final if not k.endswith("lora_B"))


def _copy_run(source, target):
    shutil.copytree(paths.output_dir(source), paths.output_dir(target), dirs_exist_ok=True)
    shutil.copytree(paths.bank_dir(3, source, "dist-a", "dev"), paths.bank_dir(3, target, "dist-a", "dev"),
                    dirs_exist_ok=True)


METHODS = ["closed_book", "rag", "regrad", "regrad_online", "shift", "no_update"]


def test_two_processes_evaluate_exactly_as_one(solo):
    _copy_run("solo", "duo-eval")
    one = launch.run(evaluate.EvaluateSettings(run="solo", datasets=["dist-a"], methods=METHODS, gammas=[0.0, 2.0]))
    two = launch.run(evaluate.EvaluateSettings(run="duo-eval", datasets=["dist-a"], methods=METHODS,
                                               gammas=[0.0, 2.0]), num_processes=2)
    assert two == one and len(one["summary"]) == len(METHODS) and len(one["sweeps"]) == 2
    for name in ("summary.csv", "sweeps.csv"):
        assert (paths.results_dir("duo-eval") / name).read_text() == (paths.results_dir("solo") / name).read_text()
    for method in METHODS:
        rows = [evaluate.predictions(run, "dist-a", method) for run in ("solo", "duo-eval")]
        assert len(rows[0]) == len(CITIES) and rows[1] == rows[0], method


def test_a_failing_rank_stops_the_job_with_its_error(solo):
    """The bank lacks the passages of the last question only; it is the shortest, so rank 1 (the second batch of
    two) alone meets it, while rank 0 waits for rank 1 in a collective."""
    _copy_run("solo", "broken")
    encode.encode("broken", "dist-b", "dev", dtype="fp32", batch_size=8, end=15)
    settings = evaluate.EvaluateSettings(run="broken", datasets=["dist-b"], methods=["regrad"])
    started = time.monotonic()
    with pytest.raises(launch.LaunchError) as error:
        launch.run(settings, num_processes=2)
    assert time.monotonic() - started < 60
    message = str(error.value)
    assert "evaluate failed on rank 1 of 2" in message
    assert "KeyError" in message and "passage id '1645' is not in the Gradient Bank" in message
    assert "Traceback of rank 1" in message and "sum_many" in message
    assert not evaluate.method_files("broken", "dist-b", "regrad")[1].exists()   # nothing half-written


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
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("-m", 3) + 1] == "regrad_lib.launch"
    assert str(paths.resolve(launch.LOCAL_CONFIG)) in cmd
    with pytest.raises(ValueError, match="num_processes=0"):
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
    json.dumps(message)
