PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel; an unpinned torch pulls several GB of CUDA packages.
TORCH_PIN := torch==2.13.0

.PHONY: setup test test-all lint format docs demo bench mutate clean

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

# The documentation site (mkdocs.yml): tutorials and the API reference, built strictly
# (a broken link, anchor or API reference fails) into site/. NO_MKDOCS_2_WARNING
# silences Material's notice about its successor, which is not about this site.
docs:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo:
	$(BIN)/torchformer demo

# Mutation testing (not in CI): mutmut 3, one scope at a time (tools/mutate.py: train/
# against tests/train, generate/ and evaluate/ against theirs, then the task packages
# against the task tests; each in
# build/mutate/<scope>/, `python tools/mutate.py SCOPE --resume` goes on after a stop).
# The result and the survivors, with why each is harmless: docs/mutation.md.
mutate:
	$(BIN)/pip install -q "mutmut>=3.8"
	$(BIN)/python tools/mutate.py train
	$(BIN)/python tools/mutate.py generate
	$(BIN)/python tools/mutate.py evaluate
	$(BIN)/python tools/mutate.py tasks

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info .pytest_cache .ruff_cache
