# The README's two commands: `make compare` (main job on the bundled model) and `make test`; `make demo` opens the app;
# `make lint` (ruff + the import layers) runs in CI before the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint format docs docs-serve bench compare demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned here so a CPU machine takes the local CPU wheel instead of a multi-GB CUDA build;
# the package itself only asks for a range that this pin satisfies.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,train,dev]"

test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# the documentation site, built in strict mode (a broken link or reference fails); `make docs-serve` serves it locally
docs: setup
	$(BIN)/pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: docs
	$(BIN)/mkdocs serve

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# main job: the bundled ShapeWorld model, every method side by side with the same seed, judged;
# writes outputs/compare/grid.png and one PNG per image
compare: setup
	HF_HUB_OFFLINE=1 $(BIN)/negguide generate "a red shape" -n "a red circle" -w 1.5 \
		--compare none plain perp-neg nag negtome reneg nft-lora \
		--with-negatives --batch 8 --steps 20 --out outputs/compare --overwrite

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/negguide demo

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/negguide bench --out outputs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/perp_neg_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
