# Two entry points for a fresh machine: `make serve` and `make test` (each installs what it needs first).
PYTHON ?= python3
VENV ?= .venv
# torch 2.14.1 + torchvision 0.29.1 are what the shipped artifacts were made and tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint bench accuracy

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH_SPEC)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	PIXELSERVE_MODEL_REPOSITORY=$${PIXELSERVE_MODEL_REPOSITORY:-models} \
		$(VENV)/bin/uvicorn --factory app.main:create_app --http app.http_protocol:HeaderLimitedProtocol --no-access-log \
		--host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python -m benchmarks.serve

accuracy: install
	$(VENV)/bin/python -m benchmarks.accuracy
