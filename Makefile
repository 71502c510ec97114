# The two commands a newcomer needs: `make run` and `make test`.
# Both create the virtual environment on first use; nothing is installed by hand.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# The newest supported CPython on PATH or under pyenv (3.13, 3.12, 3.11); PYTHON=... chooses another.
PYTHON ?= $(shell scripts/find_python.sh)
# durable_rules 2.0.28 calls PyEval_CallObject, which CPython 3.13 removed; its setup.py overwrites
# CFLAGS but not CPPFLAGS, so on 3.13 the same PyPI sdist is built with this one definition.
DURABLE_CPPFLAGS := -DPyEval_CallObject(c,a)=PyObject_CallObject(c,a)

.PHONY: run test lint venv sample clean serve

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "No supported Python found: otrules needs CPython 3.11, 3.12 or 3.13, as" \
	  "python3.X on PATH or under pyenv; set PYTHON=/path/to/python3.X to choose one. On 3.13 durable_rules" \
	  "is built with CPPFLAGS='$(DURABLE_CPPFLAGS)' (README, 'Python versions')."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then \
	  echo "CPython 3.13: building durable_rules with CPPFLAGS='$(DURABLE_CPPFLAGS)'"; \
	  export CPPFLAGS="$${CPPFLAGS:-} $(DURABLE_CPPFLAGS)"; fi; \
	$(BIN)/pip install -q -e '.[test]'
	@$(BIN)/python -c 'import durable_rules_engine' || { echo "durable_rules does not import (a wheel built" \
	  "without the 3.13 definition in pip's cache?): pip cache remove durable_rules, then make clean"; exit 2; }
	@touch $@

venv: $(BIN)/.installed

run: venv  ## embedded pipeline over the bundled sample stream, as a table
	$(BIN)/otrules run --format table

serve: venv  ## the CDS Hooks service and dashboard over the bundled sample, on 127.0.0.1:8080 (printed)
	$(BIN)/otrules serve

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
