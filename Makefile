PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel; an unpinned torch pulls several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: setup test test-all lint format demo bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e ".[dev]"

# Tiers 1-3 (unit, parity, real data); tier 4 (-m slow) runs by hand.
test:
	$(BIN)/pytest -q -m "not slow"

test-all:
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo:
	$(BIN)/torchformer demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
