# The README's two commands: `make demo` (main job on the bundled model) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test bench compare clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned here so a CPU machine takes the local CPU wheel instead of a multi-GB CUDA build;
# the package itself only asks for a range that this pin satisfies.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,train]"

test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

# main job: the bundled ShapeWorld model, every method side by side, judged; writes outputs/compare/*.png
compare: setup
	HF_HUB_OFFLINE=1 $(BIN)/negguide bench --quick --out outputs/compare

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/negguide bench --out outputs/bench
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/perp_neg_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
