# dicomflow — the two commands: `make demo` and `make test`. Every set-up step is here and idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
APT_PACKAGES := orthanc orthanc-dicomweb dicom3tools dcmtk chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup demo test lint bench clean ui
help:
	@echo "make demo   set up, start the local cloud and run the whole loop"
	@echo "make test   set up, then run the whole test suite"
	@echo "make lint   ruff"
	@echo "make bench  run the benchmarks in bench/"

setup: $(STAMPS)/apt $(STAMPS)/python ui

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Debian: apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMPS)/python: $(VENV)/bin/python requirements.lock pyproject.toml
	@mkdir -p $(STAMPS)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

ui:
	@if [ -f labeling_ui/package.json ]; then $(MAKE) -s $(STAMPS)/ui; fi
	@if [ -f search_ui/package.json ]; then $(MAKE) -s $(STAMPS)/search_ui; fi
	@if [ -f viewer/fetch-ohif.sh ]; then $(MAKE) -s $(STAMPS)/viewer; fi

$(STAMPS)/ui: labeling_ui/package.json labeling_ui/package-lock.json $(shell find labeling_ui/src -type f 2>/dev/null) labeling_ui/vite.config.js
	@mkdir -p $(STAMPS)
	@# npm ci refuses this lock: the registry lacks rollup's other-platform binaries, so they are absent
	@# from it. npm install --no-save installs exactly the locked tree and never rewrites the lock.
	cd labeling_ui && npm install --no-save --no-audit --no-fund --loglevel=error && npm run -s build
	@touch $@

$(STAMPS)/search_ui: search_ui/package.json search_ui/package-lock.json search_ui/index.html $(shell find search_ui/src -type f 2>/dev/null) search_ui/vite.config.js
	@mkdir -p $(STAMPS)
	cd search_ui && npm install --no-save --no-audit --no-fund --loglevel=error && npm run -s build
	@touch $@

$(STAMPS)/viewer: viewer/fetch-ohif.sh
	@mkdir -p $(STAMPS)
	viewer/fetch-ohif.sh
	@touch $@

demo: setup
	$(VENV)/bin/dicomflow demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMPS)/python
	$(VENV)/bin/ruff check .

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(STAMPS) labeling_ui/dist labeling_ui/node_modules search_ui/dist search_ui/node_modules viewer/dist viewer/.pack
