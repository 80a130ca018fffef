"""Run the numbered notebooks headlessly with papermill: ``python -m regrad_lib.runner.pipeline --run NAME ...``.

Each notebook is executed into ``runs/<run>/<notebook>.ipynb`` with the shared parameters it declares
(run, preset, datasets, ...) plus any ``-p key value``. The runner stops at the first failing notebook and
says which notebook and cell failed and where the executed copy is. ``--prepare-only`` writes parameterised
copies without executing them (the test suite runs nbval on those). ``--num-processes N`` (and
``--accelerate-config FILE``) run the heavy steps 03_train, 04_encode and 05_evaluate as jobs of N processes
under ``accelerate launch`` (:mod:`regrad_lib.runner.launch`); a failing process names its rank in the error.
The executed copies of a call with ``-p evaluation <name>`` go to ``runs/<run>/evaluations/<name>/``.

``--domain`` selects the public code's settings of which data sets are trained and evaluated together (its
``--domain``): ``general`` (2WikiMultihopQA, ComplexWebQuestions, PopQA and HotpotQA mixed in meta-training and
evaluated) and ``med`` (PubMedQA, with its context paragraphs as the corpus, in an index of its own). Explicit
``--datasets``, ``--train-datasets`` and ``-p`` values override the domain's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regrad_lib.io import params, paths
from regrad_lib.runner import notebook

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_index", "02_augment", "03_train", "04_encode", "05_evaluate", "06_analyze")
GENERAL = ["2wikimultihopqa", "complexwebquestions", "popqa", "hotpotqa"]
# The public code's domains that have data here; law and sports (LHF, HousingQA, CaseHold; Basketball, Football)
# could not be obtained. "med" reads PubMedQA from <data_root>/pubmedqa (the bundled sample unless -p data_root).
DOMAINS: dict[str, dict[str, Any]] = {
    "general": {"datasets": GENERAL, "train_datasets": GENERAL},
    "med": {"datasets": ["pubmedqa"], "train_datasets": ["pubmedqa"], "probe": False, "index": "pubmedqa",
            "sweep_datasets": ["pubmedqa"], "limit_per_dataset": {}},
}


class PipelineError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the executed copy."""


@dataclass(frozen=True)
class Step:
    name: str
    source: Path


def select_steps(spec: str = "01-06") -> list[Step]:
    """``"01-06"``, ``"03"``, ``"01,02,05"`` or ``"04-"`` → the notebooks to run, in order."""
    numbers = [n.split("_")[0] for n in NOTEBOOKS]
    chosen: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            lo, hi = lo or numbers[0], hi or numbers[-1]
            if lo not in numbers or hi not in numbers:
                raise ValueError(f"--steps {spec!r}: unknown step in {part!r}; steps are {numbers}")
            if numbers.index(lo) > numbers.index(hi):
                raise ValueError(f"--steps {spec!r}: {lo} comes after {hi}; write the steps in order, e.g. "
                                 f"{numbers[0]}-{numbers[-1]}")
            chosen += numbers[numbers.index(lo):numbers.index(hi) + 1]
        elif part in numbers:
            chosen.append(part)
        else:
            raise ValueError(f"--steps {spec!r}: unknown step {part!r}; steps are {numbers}")
    return [Step(n, paths.notebooks_dir() / f"{n}.ipynb") for n in NOTEBOOKS if n.split("_")[0] in chosen]


def parse_value(text: str) -> Any:
    """``-p`` values: JSON literals (numbers, true/false/null, lists) where they parse, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(text, text)


def declared_parameters(source: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(source)))


def declared_by(steps: Sequence[Step], shared: dict[str, Any]) -> dict[str, set[str]]:
    """Each step's declared parameters (by number); ValueError naming a shared parameter none of them declares."""
    declared = {s.name[:2]: declared_parameters(s.source) for s in steps}
    unknown = set(shared) - set().union(*declared.values()) - {"run"}
    if unknown:
        known = sorted(set().union(*declared.values()))
        raise ValueError(f"parameter(s) {sorted(unknown)} are declared by none of the notebooks "
                         f"{[s.name for s in steps]}; known: {known}")
    return declared


def parameters_for(step: Step, shared: dict[str, Any]) -> dict[str, Any]:
    """The shared parameters this notebook declares in its ``parameters`` cell."""
    declared = declared_parameters(step.source)
    return {k: v for k, v in shared.items() if k in declared}


def check_replaceable(output: Path) -> None:
    """Refuse to write ``output`` over a file the runner did not write: an executed copy carries papermill's
    metadata; anything else there (a user's own notebook in the folder ``--out`` names, a link) is kept."""
    shown = paths.relative(output)
    if output.is_symlink():
        raise FileExistsError(f"{shown} is a symbolic link: the runner does not write through links; name another "
                              "folder with --out, or remove the link")
    if not output.exists():
        return
    try:
        ours = output.is_file() and "papermill" in json.loads(output.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise FileExistsError(f"{shown} exists and was not written by the runner (it is no executed copy of a "
                              "notebook): it is not replaced; name another folder with --out, or move the file away")


def _failure_message(step: Step, output: Path, error: Exception) -> str:
    cell = ""
    try:
        import nbformat

        nb = nbformat.read(str(output), as_version=4)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                first_line = (c.source.splitlines() or [""])[0]
                cell = f" in cell {i} ({first_line[:80]!r})"
                break
    except (OSError, ValueError) as e:  # the copy may not exist if the kernel never started
        cell = f" (executed copy unreadable: {e})"
    reason = getattr(error, "ename", type(error).__name__) + ": " + str(getattr(error, "evalue", error))
    return f"{step.name} failed{cell}: {reason.strip().splitlines()[0] if reason.strip() else reason}\n" \
           f"Executed copy: {paths.relative(output)}"


def _quiet_kernel_manager():
    """nbclient's kernel manager, except that a finished notebook's kernel is not sent SIGINT before its shutdown
    request: jupyter_client interrupts every kernel it shuts down, and a kernel still handling a message then logs
    a harmless but alarming ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.`` (seen after 02_augment,
    where the next notebook starts). A kernel that does not stop is still terminated, then killed."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietShutdown(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return QuietShutdown


def domain_parameters(domain: str, given: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``--domain`` (:data:`DOMAINS`) that ``given`` does not set; ``med`` indexes the PubMedQA
    folder ``<data_root>/pubmedqa`` (its context paragraphs)."""
    if domain not in DOMAINS:
        raise ValueError(f"--domain {domain!r}: choose one of {sorted(DOMAINS)}")
    out = dict(DOMAINS[domain])
    if domain == "med":
        out["corpus"] = f"{given.get('data_root', 'data/sample')}/pubmedqa"
    return {k: v for k, v in out.items() if k not in given}


def run(run_name: str, shared: dict[str, Any], steps: str = "01-06", out_dir: Path | None = None,
        prepare_only: bool = False, kernel: str | None = None) -> list[Path]:
    """Execute (or only parameterise) the chosen notebooks in order; returns the executed copies (in ``out_dir``,
    default ``runs/<run>/``, or ``runs/<run>/evaluations/<evaluation>/`` for a named evaluation)."""
    import papermill

    out_dir = out_dir or paths.executed_notebooks_dir(run_name, shared.get("evaluation"))
    shared = {"run": run_name, **shared}
    chosen = select_steps(steps)
    declared_by(chosen, shared)
    shared = notebook.typed_parameters(shared)
    for step in chosen:     # before any notebook runs: nothing of a folder the user named is replaced
        check_replaceable(out_dir / f"{step.name}.ipynb")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for step in chosen:
        output = out_dir / f"{step.name}.ipynb"
        params = parameters_for(step, shared)
        log.info("%s %s → %s  %s", "preparing" if prepare_only else "running", step.name, paths.relative(output),
                 json.dumps(params))
        started = time.perf_counter()
        try:
            papermill.execute_notebook(str(step.source), str(output), parameters=params, prepare_only=prepare_only,
                                       kernel_name=kernel, cwd=str(paths.repo_root()), progress_bar=False,
                                       log_output=False, kernel_manager_class=_quiet_kernel_manager())
        except papermill.PapermillExecutionError as e:
            raise PipelineError(_failure_message(step, output, e)) from None
        if not prepare_only:
            log.info("%s done in %.0f s", step.name, time.perf_counter() - started)
        outputs.append(output)
    return outputs


def run_seeds(run_name: str, shared: dict[str, Any], seeds: Sequence[int], steps: str = "01-06",
              kernel: str | None = None) -> list[Path]:
    """The same setting once per seed: index and augment once (``<run>``), then meta-training, bank,
    evaluation and analysis per seed (``<run>-s<seed>``), and last an 06_analyze of all seeds together
    (``runs/<run>/06_analyze.ipynb``: mean ± spread across them)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {list(seeds)}: give at least two different seeds, e.g. 42,43,44")
    declared = declared_by(select_steps(steps), shared)
    chosen = list(declared)

    def mine(phase: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        # each call passes only what its own notebooks declare (01/02 take no preset, the last 06 no limit)
        names_ = set().union(*(declared[n] for n in phase))
        return {k: v for k, v in {**shared, **extra}.items() if k in names_}

    once = [n for n in chosen if n in ("01", "02")]
    each = [n for n in chosen if n not in ("01", "02")]
    outputs = run(run_name, mine(once, {}), ",".join(once), kernel=kernel) if once else []
    names = [f"{run_name}-s{seed}" for seed in seeds]
    for name, seed in zip(names, seeds):
        if each:
            outputs += run(name, mine(each, {"seed": seed} if "03" in chosen else {}), ",".join(each), kernel=kernel)
    if "06" in chosen:
        outputs += run(run_name, {**mine(["06"], {}), "run": names[0], "seed_runs": names[1:]}, "06", kernel=kernel)
    return outputs


TEXT_FLAGS = ("preset", "datasets", "train_datasets", "steps", "accelerate_config", "out", "kernel", "seeds",
              "domain")
FOR_NONE = {"train_datasets": "-p train_datasets '[]'"}


def check_flags(args: argparse.Namespace) -> None:
    """A flag given with empty text is refused, naming it: ``--preset ''`` must not mean the default preset
    (``--run`` is checked as a folder name)."""
    for name in TEXT_FLAGS:
        value = getattr(args, name)
        if value is not None and not value.strip(" ,"):
            flag = "--" + name.replace("_", "-")
            none = f" (for none: {FOR_NONE[name]})" if name in FOR_NONE else ""
            raise ValueError(f"{flag} {value!r} is empty: give a value or leave the flag out{none}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regrad_lib.runner.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run name: outputs/<run>, results/<run>, runs/<run>")
    parser.add_argument("--preset", help="config preset (configs/<preset>), e.g. smollm2-135m-instruct")
    parser.add_argument("--datasets", help="comma-separated evaluation datasets, e.g. popqa,hotpotqa")
    parser.add_argument("--train-datasets", help="comma-separated training datasets")
    parser.add_argument("--steps", default="01-06", help="which notebooks: 01-06, 03-05, 05 ... (default all)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="any notebook parameter; JSON values (3, true, null, [1,2]) or plain strings")
    parser.add_argument("--num-processes", type=int,
                        help="processes for 03_train, 04_encode and 05_evaluate (accelerate launch; default 1)")
    parser.add_argument("--accelerate-config", help="accelerate config file for those steps (configs/accelerate/)")
    parser.add_argument("--prepare-only", action="store_true", help="write parameterised copies, do not execute")
    parser.add_argument("--out", help="folder for the executed copies (default runs/<run>)")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebooks' own)")
    parser.add_argument("--seeds", help="comma-separated seeds: the pipeline once per seed (<run>-s<seed>) and "
                                        "an 06_analyze across them in runs/<run>/")
    parser.add_argument("--domain", help=f"data sets trained and evaluated together, as the public code's --domain: "
                                         f"{', '.join(sorted(DOMAINS))} (general: {','.join(GENERAL)}; med: pubmedqa)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    shared: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        check_flags(args)
        if args.preset is not None:
            shared["preset"] = args.preset
        if args.datasets is not None:
            shared["datasets"] = [d.strip() for d in args.datasets.split(",") if d.strip()]
        if args.train_datasets is not None:
            shared["train_datasets"] = [d.strip() for d in args.train_datasets.split(",") if d.strip()]
        if args.num_processes is not None:
            shared["num_processes"] = args.num_processes
        if args.accelerate_config is not None:
            shared["accelerate_config"] = args.accelerate_config
        text_parameters = {k for k, d in notebook.parameter_defaults().items()
                           if {type(v) for v in d if v is not None} == {str}}
        for key, value in args.parameter:   # a text parameter keeps its text: -p evaluation 2 is "2", not 2
            shared[key] = value if key in text_parameters and value not in ("None", "null") else parse_value(value)
        if args.domain is not None:
            shared.update(domain_parameters(args.domain, shared))
        if args.seeds is not None:
            if args.prepare_only or args.out:
                raise ValueError("--seeds runs the notebooks; it takes neither --prepare-only nor --out")
            seeds = [params.integer("--seeds", s) for s in args.seeds.split(",") if s.strip()]
            outputs = run_seeds(args.run, shared, seeds, args.steps, args.kernel)
        else:
            outputs = run(args.run, shared, args.steps, Path(args.out).resolve() if args.out is not None else None,
                          args.prepare_only, args.kernel)
    except (PipelineError, ValueError, FileNotFoundError, FileExistsError) as e:
        log.error("%s", e)
        return 1
    log.info("%d notebook(s) %s in %.0f s: %s", len(outputs), "prepared" if args.prepare_only else "executed",
             time.perf_counter() - started, paths.relative(outputs[-1].parent) if outputs else "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
