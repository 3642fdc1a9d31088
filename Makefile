# Settlement gateway. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py fastcore/_core.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python setup.py -q build_ext --inplace
	@touch $(STAMP)

install: $(STAMP) ## Make the virtual environment, install, build the Cython extension

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

run: install ## Serve the gateway on :8000 (starts local Redis, Kafka and PostgreSQL unless configured; STACK=cluster)
	@deploy/run.sh

test: install ## Run every test against real Redis, Kafka and PostgreSQL (started here when not running)
	@deploy/test.sh

chaos: install ## The long fault suite: each fault held 30 s under load, Kafka and the processor audited (~15 min); CHAOS_ARGS, STACK=cluster
	@deploy/chaos.sh $(CHAOS_ARGS)

bench: $(BENCH_STAMP) ## Gateway vs peer vs ceiling, one node vs cluster, Redis clients A/B; report, plot, verdict (~30 min; STACK=cluster)
	@deploy/bench.sh $(BENCH_ARGS)

stack-up: install ## Start the local Redis, Kafka and PostgreSQL and leave them running (STACK=cluster: the clusters)
	@deploy/stack.sh up >/dev/null

stack-down: ## Stop the local Redis, Kafka and PostgreSQL (STACK=cluster: the clusters)
	@deploy/stack.sh down

# (mkdocs without --quiet: it would hide the warnings --strict counts)
lint: install ## ruff, mypy, and the documentation site built with strict warnings (offline)
	$(BIN)/ruff check settlement gateway processor fastcore tests tools deploy benchmarks
	$(BIN)/ruff format --check settlement gateway processor fastcore tests tools deploy benchmarks
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $$(mktemp -d)

docs: install ## Build the documentation site (MkDocs with Material, offline) into site/; open site/index.html
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean: ## Stop both local stacks; remove the environment, the stacks' data and build products
	@STACK=single deploy/stack.sh down
	@STACK=cluster deploy/stack.sh down
	rm -rf $(VENV) .stack build site fastcore/_core.c fastcore/*.so *.egg-info

.PHONY: help install run test chaos bench stack-up stack-down lint docs clean
