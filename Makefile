# The two commands a newcomer needs: `make run` and `make test`.
# Both create the virtual environment on first use; nothing is installed by hand.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# durable_rules needs CPython 3.11 or 3.12: take the first such interpreter on PATH.
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
  $$p -c 'import sys; sys.exit(not ((3,11) <= sys.version_info[:2] < (3,13)))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test lint venv sample clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 or 3.12 is required (durable_rules does not import on 3.13)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(BIN)/.installed

run: venv  ## embedded pipeline over the bundled sample stream, as a table
	$(BIN)/otrules run --format table

test: venv  ## the whole test suite, rule test cases included
	$(BIN)/python -m pytest -q

# mypy reads the package through build/typecheck/otrules, links laid out as pyproject.toml's
# package-dir says (the editable install's import hook is invisible to it): see [tool.mypy].
# Both always run, so one pass shows every finding; either failing fails the target.
lint: venv  ## the lint gate: ruff, then mypy (both configured in pyproject.toml)
	@status=0; \
	echo "$(BIN)/ruff check ."; $(BIN)/ruff check . || status=1; \
	echo "$(BIN)/mypy"; { $(BIN)/python scripts/typecheck_tree.py && $(BIN)/mypy; } || status=1; \
	exit $$status

sample: venv  ## regenerate the bundled sample stream
	$(BIN)/python -m otrules.synthetic --patients 40 --seed 7 --out rules/samples/sample-stream.jsonl

clean:
	rm -rf $(VENV) build *.egg-info
