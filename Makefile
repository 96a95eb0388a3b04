# The two commands a user needs: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
# Debian packages the pipeline calls: ffmpeg (frames), espeak-ng (regenerating the sample).
SYSTEM_PACKAGES := ffmpeg espeak-ng
SYSTEM_TOOLS := ffmpeg espeak-ng

.PHONY: setup system demo test test-fast lint clean help slurm-up slurm-down

help:
	@echo "make demo   set up, then run the workflow on the bundled sample"
	@echo "make test   set up, lint, then run the whole test suite (about 25 minutes on 2 cores)"
	@echo "make test-fast  the tests that start no workflow and no cluster (under 2 minutes)"
	@echo "make setup  system packages (as root) + $(VENV) with pinned dependencies"
	@echo "make lint   ruff + snakemake --lint"

setup: system $(VENV)/.installed

system:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES); } || exit 1; \
	  else \
	    echo "missing system tools:$$missing"; \
	    echo "install them with your package manager (Debian: sudo apt-get install $(SYSTEM_PACKAGES))," \
	         "or on a cluster: module load ffmpeg"; \
	    exit 1; \
	  fi; \
	fi
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or pass PYTHON=..."; exit 1; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --report results/report.html
	@echo
	@echo "Done. Aligned shards: results/aligned/{train,dev,test}/shard-*.parquet"
	@echo "      Manifests:      results/manifest/{train,dev,test}.parquet (summary.txt, .png)"
	@echo "      Training runs:  results/train/{experiment}/seed-{n}/ (best/ model, metrics, TensorBoard)"
	@echo "      Comparison:     results/evaluate/ (mean ± sd over seeds, plots)"
	@echo "      HTML report:    results/report.html"
	@echo "      Logs per job:   results/logs/"

test: setup lint
	@if [ "$$(id -u)" = 0 ]; then bash cluster/local-slurm/up.sh; \
	 else echo "not root: the SLURM tests need cluster/local-slurm/up.sh run as root"; fi
	$(BIN)/pytest -ra $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -ra -m "not integration and not slurm" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

slurm-up:
	bash cluster/local-slurm/up.sh

slurm-down:
	bash cluster/local-slurm/down.sh

clean:
	rm -rf results .snakemake
