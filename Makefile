# make demo  - set up a virtualenv, start the bundled lab (emulated RDS log API + local S3 with
#              real csvlog data), back the logs up with `rdsrecorder sync`, verify the copy.
# make test  - set up everything (virtualenv, PostgreSQL, Prometheus) and run lint, types, tests.
# make bench - the benchmarks (print tables; not tests): the limits table, then the CPU-bound one.
# make bench-limits - only the limits table: rdsrecorder and the AWS CLI against the API's limits.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint bench bench-limits clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/rdsrecorder lab demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict rdsrecorder rdsrecorder_lab

test: $(STAMP)
	bash scripts/system-deps.sh
	$(MAKE) lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --big

bench-limits: $(STAMP)
	$(BIN)/python benchmarks/limits.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
