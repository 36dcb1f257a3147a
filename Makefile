# The two commands of the README:  `make dev` (run everything locally)  and  `make test`.
VENV := .venv
PYTHON ?= python3

.PHONY: dev test setup bench lint

$(VENV)/.installed-app: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-app pyproject.toml
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed-test

dev: $(VENV)/.installed-app
	$(VENV)/bin/studio dev

test: $(VENV)/.installed-test
	$(VENV)/bin/pytest

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy jobs clients db settings.py

bench: $(VENV)/.installed-test
	$(VENV)/bin/python bench/broker.py --compare graphile-worker
