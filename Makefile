PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel; an unpinned torch pulls several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: setup test test-all lint format demo bench mutate clean

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

# Mutation testing (not in CI): mutmut 3, configured in pyproject.toml ([tool.mutmut]);
# the result and the survivors, with why each is harmless or what kills it: docs/mutation.md.
mutate:
	$(BIN)/pip install -q "mutmut>=3.8"
	rm -rf mutants
	TORCHFORMER_DATA=$${TORCHFORMER_DATA:-$(CURDIR)/../shared/data} OMP_NUM_THREADS=1 \
		$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
