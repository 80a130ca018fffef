
import nbformat
import pytest

from regrad_lib.io import paths
from regrad_lib.runner import pipeline


def test_select_steps():
    assert [s.name for s in pipeline.select_steps("01-06")] == list(pipeline.NOTEBOOKS)
    assert [s.name for s in pipeline.select_steps("03-04")] == ["03_train", "04_encode"]
    assert [s.name for s in pipeline.select_steps("05,01")] == ["01_index", "05_evaluate"]
    assert [s.name for s in pipeline.select_steps("05-")] == ["05_evaluate", "06_analyze"]
    with pytest.raises(ValueError, match="unknown step"):
        pipeline.select_steps("07")


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("true", True), ("None", None), ("[1, 2]", [1, 2]),
                                        ("popqa", "popqa"), ("cuda", "cuda")])
def test_parse_value(text, value):
    assert pipeline.parse_value(text) == value


def _notebook(path, body, extra=""):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('run = "x"  # run\nvalue = 1  # a number' + extra)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture()
def fake_notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "NOTEBOOKS", ("01_ok", "02_fail", "03_never"))
    monkeypatch.setattr(paths, "notebooks_dir", lambda: tmp_path / "nb")
    (tmp_path / "nb").mkdir()
    _notebook(tmp_path / "nb" / "01_ok.ipynb", "assert value == 7\nprint(run)")
    _notebook(tmp_path / "nb" / "02_fail.ipynb", "raise ValueError(f'bad value {value}')")
    _notebook(tmp_path / "nb" / "03_never.ipynb", "pass")
    return tmp_path


def test_runner_passes_parameters_and_stops_at_the_first_failure(fake_notebooks):
    out = fake_notebooks / "out"
    with pytest.raises(pipeline.PipelineError) as e:
        pipeline.run("r1", {"value": 7}, "01-03", out_dir=out)
    message = str(e.value)
    assert "02_fail failed in cell" in message and "ValueError: bad value 7" in message
    assert str(out / "02_fail.ipynb") in message or "02_fail.ipynb" in message
    executed = nbformat.read(str(out / "01_ok.ipynb"), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'run = "r1"' in injected[0].source and "value = 7" in injected[0].source
    assert not (out / "03_never.ipynb").exists()


def test_unknown_parameter_is_refused(fake_notebooks):
    with pytest.raises(ValueError, match="declared by none"):
        pipeline.run("r1", {"valeu": 7}, "01", out_dir=fake_notebooks / "out", prepare_only=True)


def test_main_reports_failure_with_exit_code(fake_notebooks, caplog):
    assert pipeline.main(["--run", "r2", "--steps", "01", "-p", "value", "7", "--out", str(fake_notebooks / "o")]) == 0
    assert pipeline.main(["--run", "r2", "--steps", "02", "--out", str(fake_notebooks / "o")]) == 1
    assert "02_fail failed" in caplog.text


def test_num_processes_reaches_the_notebooks_that_declare_it(fake_notebooks, caplog):
    _notebook(fake_notebooks / "nb" / "01_ok.ipynb", "assert (num_processes, accelerate_config) == (2, 'c.yaml')",
              extra="\nnum_processes = 1  # processes\naccelerate_config = None  # file")
    out = fake_notebooks / "o"
    assert pipeline.main(["--run", "r3", "--steps", "01", "--num-processes", "2", "--accelerate-config", "c.yaml",
                          "--out", str(out)]) == 0
    assert pipeline.main(["--run", "r3", "--steps", "03", "--num-processes", "2", "--out", str(out)]) == 1
    assert "['num_processes'] are declared by none" in caplog.text


def test_seeds_run_index_and_augment_once_then_each_seed_then_an_analysis_across_them(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "run", lambda name, shared, steps, *a, **k: calls.append((name, shared, steps))
                        or [steps])
    pipeline.run_seeds("demo", {"limit": 3, "preset": "tiny"}, [1, 2, 3])
    # each call gets only the parameters its notebooks declare: no preset for 01/02, neither for the last 06
    assert calls == [("demo", {"limit": 3}, "01,02"),
                     ("demo-s1", {"limit": 3, "preset": "tiny", "seed": 1}, "03,04,05,06"),
                     ("demo-s2", {"limit": 3, "preset": "tiny", "seed": 2}, "03,04,05,06"),
                     ("demo-s3", {"limit": 3, "preset": "tiny", "seed": 3}, "03,04,05,06"),
                     ("demo", {"run": "demo-s1", "seed_runs": ["demo-s2", "demo-s3"]}, "06")]
    with pytest.raises(ValueError, match=r"\['limitt'\] are declared by none"):
        pipeline.run_seeds("demo", {"limitt": 3}, [1, 2])
    calls.clear()
    pipeline.run_seeds("demo", {}, [1, 2], steps="05-06")
    assert calls == [("demo-s1", {}, "05,06"), ("demo-s2", {}, "05,06"),
                     ("demo", {"run": "demo-s1", "seed_runs": ["demo-s2"]}, "06")]
    with pytest.raises(ValueError, match="at least two different seeds"):
        pipeline.run_seeds("demo", {}, [1, 1])


def test_domains_set_the_datasets_trained_and_evaluated_together():
    general = pipeline.domain_parameters("general", {})
    assert general == {"datasets": pipeline.GENERAL, "train_datasets": pipeline.GENERAL}
    assert set(pipeline.GENERAL) == {"2wikimultihopqa", "complexwebquestions", "popqa", "hotpotqa"}
    med = pipeline.domain_parameters("med", {"data_root": "../shared/data/domains", "index": "mine"})
    assert med == {"datasets": ["pubmedqa"], "train_datasets": ["pubmedqa"], "probe": False,
                   "sweep_datasets": ["pubmedqa"], "limit_per_dataset": {},
                   "corpus": "../shared/data/domains/pubmedqa"}   # index: given
    with pytest.raises(ValueError, match="--domain 'law'"):
        pipeline.domain_parameters("law", {})


def test_domain_reaches_the_real_notebooks_and_explicit_values_win(tmp_path):
    out = tmp_path / "prepared"
    assert pipeline.main(["--run", "g", "--domain", "general", "--datasets", "popqa", "--prepare-only",
                          "--out", str(out)]) == 0
    injected = {n: next(c.source for c in nbformat.read(str(out / f"{n}.ipynb"), as_version=4).cells
                        if "injected-parameters" in c.metadata.get("tags", []))
                for n in ("02_augment", "03_train")}
    assert 'datasets = ["popqa"]' in injected["02_augment"]
    assert 'train_datasets = ["2wikimultihopqa", "complexwebquestions", "popqa", "hotpotqa"]' in injected["03_train"]


def test_a_named_evaluation_keeps_its_executed_notebooks_apart(fake_notebooks):
    _notebook(fake_notebooks / "nb" / "01_ok.ipynb", "assert value == 7", extra="\nevaluation = None  # name")
    assert pipeline.main(["--run", "r4", "--steps", "01", "-p", "value", "7", "-p", "evaluation", "mine"]) == 0
    assert (paths.executed_notebooks_dir("r4", "mine") / "01_ok.ipynb").is_file()
    assert paths.executed_notebooks_dir("r4", "mine") == paths.work_root() / "runs" / "r4" / "evaluations" / "mine"
    assert not (paths.executed_notebooks_dir("r4") / "01_ok.ipynb").exists()


def test_finished_kernels_are_shut_down_without_an_interrupt():
    """jupyter_client sends SIGINT before every shutdown; a kernel still busy with a message then logged
    '[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.' after 02_augment (2 of 3 tiny runs)."""
    import asyncio

    manager = pipeline._quiet_kernel_manager()()
    with pytest.raises(RuntimeError, match="No kernel is running"):     # an interrupt otherwise goes through
        asyncio.run(manager._async_interrupt_kernel())
    manager.shutting_down = True
    assert asyncio.run(manager._async_interrupt_kernel()) is None


def test_the_runner_replaces_no_file_it_did_not_write(fake_notebooks, caplog):
    """--out names a folder: a file there of the name of an executed copy is replaced only when papermill wrote it."""
    out = fake_notebooks / "mine"
    out.mkdir()
    (out / "01_ok.ipynb").write_text("my own notebook")
    assert pipeline.main(["--run", "r5", "--steps", "01", "-p", "value", "7", "--out", str(out)]) == 1
    assert "01_ok.ipynb exists and was not written by the runner" in caplog.text
    assert (out / "01_ok.ipynb").read_text() == "my own notebook"
    assert pipeline.main(["--run", "r5", "--steps", "01", "-p", "value", "7", "--out", str(fake_notebooks / "o")]) == 0
    assert pipeline.main(["--run", "r5", "--steps", "01", "-p", "value", "7", "--out", str(fake_notebooks / "o")]) == 0


@pytest.mark.parametrize("flag", ["--preset", "--datasets", "--train-datasets", "--accelerate-config", "--seeds",
                                  "--domain"])
def test_an_empty_flag_is_refused_naming_it(flag, caplog):
    """`--preset ''` fell back to the default preset (a run trained with smollm2 when none was meant)."""
    assert pipeline.main(["--run", "r6", "--prepare-only", flag, ""]) == 1
    assert f"{flag} '' is empty" in caplog.text


def test_steps_in_reverse_order_are_refused():
    """`--steps 06-01` ran nothing and exited 0."""
    with pytest.raises(ValueError, match=r"--steps '06-01': 06 comes after 01; write the steps in order, e.g. 01-06"):
        pipeline.select_steps("06-01")
