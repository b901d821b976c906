# The two commands the README starts with.
#   make run   set everything up, then serve the embedded demo model on http://127.0.0.1:8000
#   make test  set everything up, then run ruff, mypy --strict and the whole test suite
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= demo

.PHONY: setup setup-test run test lint lock

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test

run: setup
	$(VENV)/bin/zimage-sse serve --host $(HOST) --port $(PORT) --model $(MODEL)

# Re-resolve requirements.lock and requirements-test.lock from pyproject.toml (UPGRADE=1: newest releases).
lock: setup-test
	UPGRADE=$(UPGRADE) scripts/lock.sh

lint: setup-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q
