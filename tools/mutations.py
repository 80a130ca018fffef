"""Planted bugs must fail a test: each mutation is applied to a temporary copy of the checkout,
its test files run there, and the copy is thrown away. Prints one line per mutation: caught (a test failed,
naming the first) or MISSED; exits 1 if any was missed. Each test command first runs on the unmutated copy and must
pass (exit 2 otherwise).

    flock /tmp/regrad-heavy.lock .venv/bin/python -m tools.mutations            # every mutation, ~6 min on 1 core
    .venv/bin/python -m tools.mutations --only verdict_alpha,rag_meta_lora      # some of them

Not part of ``make test`` (it runs test files many times). The checkout's working tree is copied (tracked and
untracked files that git does not ignore), so uncommitted changes are included.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str                 # exact text, must occur once
    new: str
    tests: tuple[str, ...]   # pytest arguments


# the reference compare's constructed cases (no chain: seconds)
COMPARE = ("tests/test_reference.py", "-k",
           "halved or twelve or near_tie_among or identical_rerun or zero_one or constructed")

MUTATIONS = (
    Mutation("best_checkpoint_reversed", "regrad_lib/training/run_folder.py",
             "return best is None or key(row) < key(best)", "return best is None or key(row) > key(best)",
             ("tests/test_train.py",)),
    Mutation("best_checkpoint_not_marked", "regrad_lib/training/train.py",
             'row["best"] = is_better(row, self.state.best, args.metric_for_best_model)',
             'row["best"] = self.state.best is None or not is_better(row, self.state.best, args.metric_for_best_model)',
             ("tests/test_train.py",)),
    Mutation("bf16_autocast_noop", "regrad_lib/core/regrad.py",
             'if precision == "no":\n        return contextlib.nullcontext()',
             'if precision in ("no", "bf16"):\n        return contextlib.nullcontext()',
             ("tests/test_regrad.py",)),
    Mutation("meta_loss_summed", "regrad_lib/training/train.py",
             "(losses.sum() / len(batch)).backward()", "losses.sum().backward()", ("tests/test_train.py",)),
    Mutation("regrad_icl_without_passages", "regrad_lib/answering/specs.py",
             '"regrad_icl": MethodSpec("meta", context=True, update="bank")',
             '"regrad_icl": MethodSpec("meta", context=False, update="bank")', ("tests/test_evaluate.py",)),
    Mutation("rag_meta_lora", "regrad_lib/answering/specs.py",
             '"rag": MethodSpec("base", context=True)',
             '"rag": MethodSpec("meta", context=True)', ("tests/test_evaluate.py",)),
    Mutation("verdict_ignores_nll_sign", "regrad_lib/reporting/effects.py",
             "_direction(e.nll.mean, pn, alpha, False)", "_direction(-abs(e.nll.mean), pn, alpha, False)",
             ("tests/test_effects.py",)),
    Mutation("verdict_alpha_0.20", "regrad_lib/reporting/effects.py",
             "ALPHA = 0.05", "ALPHA = 0.20", ("tests/test_effects.py",)),
    Mutation("ddp_zero_gradients_for_all", "regrad_lib/io/distributed.py",
             "live = [p for p, n in zip(params, has.tolist()) if n > 0]", "live = list(params)",
             ("tests/test_distributed.py", "-k", "ablation")),
    # Expected values from an independent path, not from the code under test: the references of test_regrad are
    # a merged-weight slow path, the z of test_effects is a hand number.
    Mutation("lm_loss_summed_not_averaged", "regrad_lib/core/regrad.py",
             "return nll.sum(dim=1) / counts", "return nll.sum(dim=1)", ("tests/test_regrad.py",)),
    Mutation("update_ignores_gamma", "regrad_lib/core/regrad.py",
             "return {name: phi[name] - gamma * alpha[name] * grads[name] for name in phi}",
             "return {name: phi[name] - alpha[name] * grads[name] for name in phi}", ("tests/test_regrad.py",)),
    Mutation("effect_z_per_question", "regrad_lib/reporting/effects.py",
             "return self.mean / self.se if self.se", "return self.mean / (self.se * math.sqrt(self.n)) if self.se",
             ("tests/test_effects.py",)),
    # Fixtures in which the alternatives differ: base and meta-trained general ability, a group meeting one target
    Mutation("general_change_meta_reversed", "regrad_lib/reporting/drift_report.py",
             'general_change(meta[0], base[0], "meta"', 'general_change(base[0], meta[0], "meta"',
             ("tests/test_forgetting.py",)),
    Mutation("general_change_versus_reversed", "regrad_lib/reporting/drift_report.py",
             'general_change(stream[-1], meta[0], "versus"', 'general_change(meta[0], stream[-1], "versus"',
             ("tests/test_forgetting.py",)),
    Mutation("transfer_target_either_condition", "regrad_lib/reporting/transfer_report.py",
             'reached = over >= TARGET_OVER_SHIFT and r.em["regrad"] >= half',
             'reached = over >= TARGET_OVER_SHIFT or r.em["regrad"] >= half', ("tests/test_transfer.py",)),
    # training's passage budget (max_context_len) and the bank's (bank_context_len) differ in the fixtures
    Mutation("prompt_budgets_swapped", "regrad_lib/data/prompts.py",
             'return cfg.max_context_len if stage == "train" else cfg.bank_context_len',
             'return cfg.bank_context_len if stage == "train" else cfg.max_context_len', ("tests/test_frame.py",)),
    Mutation("meta_tasks_cut_at_bank_budget", "regrad_lib/core/task_batches.py",
             "length = passage_len or cfg.max_context_len", "length = passage_len or cfg.bank_context_len",
             ("tests/test_frame.py",)),
    Mutation("bank_cut_at_training_budget", "regrad_lib/bank/encode.py",
             "max_len = max_len or learner.preset.learner.bank_context_len",
             "max_len = max_len or learner.preset.learner.max_context_len", ("tests/test_frame.py",)),
    Mutation("drift_text_cut_at_training_budget", "regrad_lib/cpt/drift.py",
             "chunk, cfg.bank_context_len, cfg.passage_format)", "chunk, cfg.max_context_len, cfg.passage_format)",
             ("tests/test_cpt.py", "-k", "hand_computation")),
    Mutation("cpt_stream_cut_at_training_budget", "regrad_lib/cpt/continual.py",
             "chosen, lc.bank_context_len, lc.passage_format)", "chosen, lc.max_context_len, lc.passage_format)",
             ("tests/test_cpt.py", "-k", "stream_order")),
    # CPT on phi: the stream starts at the meta-trained weights, so its change and the change from the base differ
    Mutation("cpt_delta_measured_from_base", "regrad_lib/cpt/continual.py",
             "drift.delta_norm(trainee, start), drift.delta_norm(trainee, base)",
             "drift.delta_norm(trainee, base), drift.delta_norm(trainee, base)",
             ("tests/test_cpt.py", "-k", "weights_choose")),
    # Untested paths: alpha alone (meta_hash, the fingerprint), a checksum on a file not required to carry one, a
    # path out of the root, the bf16 scale's rounding, the general set's exclusion of meta-trained questions
    Mutation("meta_hash_phi_only", "regrad_lib/core/learner.py",
             "for k, v in sorted(self.state_dict().items()):",
             'for k, v in sorted(i for i in self.state_dict().items() if i[0].startswith("phi.")):',
             ("tests/test_integrity.py", "-k", "meta_hash")),
    Mutation("checksum_verified_only_when_required", "regrad_lib/io/tensorfile.py",
             "elif stored != digest(tensors, metadata):", "elif required and stored != digest(tensors, metadata):",
             ("tests/test_integrity.py", "-k", "checksum")),
    Mutation("inside_root_is_only_not_the_root", "regrad_lib/io/ownership.py",
             "if inside == root.resolve() or root.resolve() not in inside.parents:",
             "if inside == root.resolve():", ("tests/test_ownership.py", "-k", "root")),
    Mutation("fingerprint_skips_alpha", "regrad_lib/cpt/drift.py",
             ',\n             *((f"alpha.{n}", v) for n, v in learner.alpha.values.items())]', "]",
             ("tests/test_cpt.py", "-k", "fingerprint")),
    Mutation("general_set_keeps_meta_trained_questions", "regrad_lib/cpt/drift.py",
             "excluded = meta_trained(run)", "excluded = set()", ("tests/test_cpt.py", "-k", "meta_trained_on")),
    Mutation("bf16_scale_rounded_to_nearest", "regrad_lib/bank/schemes.py",
             "scale = _bf16_round_up(groups.abs().amax(dim=-1) / self.qmax)",
             "scale = (groups.abs().amax(dim=-1) / self.qmax).to(SCALE_DTYPE)", ("tests/test_schemes.py",)),
    Mutation("general_direction_loss_read_as_gain", "regrad_lib/reporting/drift_report.py",
             'return "improved"', 'return "degraded"', ("tests/test_forgetting.py",)),
    # The reference compare: a changed result is one a reader would call changed (constructed cases), and
    # BENCHMARKS' sweep tables come from sweeps.csv
    Mutation("compare_mcnemar_only", "regrad_lib/reporting/reference_compare.py",
             'return ("OUT" if p < effects.ALPHA or material else "ok"), why',
             'return ("OUT" if p < effects.ALPHA else "ok"), why', COMPARE),
    Mutation("compare_one_near_tie_excuses_every_flip", "regrad_lib/reporting/reference_compare.py",
             "explained = [k for k in changed if near_tie(ref[k], new[k])]",
             "explained = changed if any(near_tie(ref[k], new[k]) for k in changed) else []", COMPARE),
    Mutation("compare_nll_floor_half_a_nat", "regrad_lib/reporting/reference_compare.py",
             'FLOORS = {"answer_nll": 0.01}', 'FLOORS = {"answer_nll": 0.5}', COMPARE),
    Mutation("compare_figure_apart_from_its_rows", "regrad_lib/reporting/reference_compare.py",
             "if abs((new_value - ref_value) - (after - before)) <= FIGURE_ROUNDING:", "if True:", COMPARE),
    Mutation("compare_without_rows_anything_passes", "regrad_lib/reporting/reference_compare.py",
             "same = rounded(ref_value) == rounded(new_value)", "same = True", COMPARE),
    Mutation("sweeps_table_shows_f1", "regrad_lib/reporting/reference_render.py",
             "return f\"{row['em']:.1f} / {row['nll']:.3f}\"", "return f\"{row['f1']:.1f} / {row['nll']:.3f}\"",
             ("tests/test_reference.py", "-k", "sweeps_block")),
)


def copy_checkout(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)
    for link in (".venv", "models"):
        if (ROOT / link).exists():
            (target / link).symlink_to((ROOT / link).resolve())


def run(m: Mutation, plant: bool = True) -> tuple[bool, str, float]:
    """(a test failed, the first failing test or pytest's last line, seconds); ``plant=False``: the unmutated copy."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        copy = Path(tmp)
        copy_checkout(copy)
        path = copy / m.file
        text = path.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"{m.name}: {m.file} holds {text.count(m.old)} copies of the text to mutate; "
                             "update the mutation")
        if plant:
            path.write_text(text.replace(m.old, m.new))
        env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "REGRAD_TEST_WORK": str(copy / ".test-work")}
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                             cwd=copy, env=env, capture_output=True, text=True)
        failed = re.findall(r"^FAILED (\S+)", out.stdout, re.M)
        return out.returncode != 0, (failed[0] if failed else out.stdout.strip().splitlines()[-1]), \
            time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutation names")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    # the same test commands must pass without the mutation, or a failure would prove nothing
    for tests in dict.fromkeys(m.tests for m in chosen):
        failed, detail, seconds = run(next(m for m in chosen if m.tests == tests), plant=False)
        print(f"{'baseline ' + ' '.join(tests):58s} {'FAILS' if failed else 'passes'}  ({seconds:.0f} s)", flush=True)
        if failed:
            print(f"the unmutated checkout fails {' '.join(tests)}: {detail}", file=sys.stderr)
            return 2
    missed = 0
    for m in chosen:
        caught, detail, seconds = run(m)
        missed += not caught
        print(f"{m.name:32s} {'caught' if caught else 'MISSED'}  {detail}  ({seconds:.0f} s)", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
