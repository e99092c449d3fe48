# Everyday tasks. Each target sets up what it needs (a .venv in the repo,
# reused when present; see scripts/lib.sh), so `make test` on a fresh clone works.
#
#   make run     Tidings on its embedded default (scripts/run.sh)
#   make test    the whole test suite (scripts/test.sh, the README's test command)
#   make style   ruff over server/, tests/, bench/ and scripts/
#   make types   mypy --strict over server/, tests/ and bench/
#   make check   style + types + config-doc + test
#   make config-doc   config/single.toml documents every setting of config.py
#   make bench   the benchmark harness (bench/harness.py; BENCH_ARGS=--quick for a short run)

SHELL := /bin/bash
export TIDINGS_VENV ?= $(CURDIR)/.venv
PY := $(TIDINGS_VENV)/bin/python
DEV_EXTRAS := test,dev
BENCH_ARGS ?=
# $(call install,EXTRAS): the venv with `pip install -e '.[EXTRAS]'` (scripts/lib.sh).
install = source scripts/lib.sh && ensure_venv && ensure_installed $(1)

.PHONY: help run test style types config-doc check bench dev clean

help:
	@sed -n 's/^#   make /make /p' Makefile

run:
	./scripts/run.sh

test:
	./scripts/test.sh

dev:
	@$(call install,$(DEV_EXTRAS))

style: dev
	$(PY) -m ruff check server tests bench scripts

types: dev
	$(PY) -m mypy --strict server/
	@# tests/ and bench/ each in their own run: both hold a top-level module
	@# named `cluster` (tests/cluster/, bench/cluster.py), which are never
	@# imported together but would collide in one mypy run.
	$(PY) -m mypy --strict tests/
	$(PY) -m mypy --strict bench/

config-doc: dev
	$(PY) scripts/check_config_doc.py

check: style types config-doc test

bench:
	@$(call install,bench)
	@if [ -x bench/setup.sh ]; then bench/setup.sh; fi
	$(PY) bench/harness.py $(BENCH_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
