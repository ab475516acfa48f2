# The README's two commands: `make run` (main job, research/showcase.py) and `make test` (tests).
# Each sets up everything it needs on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
FMNIST  = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 lies on disk; pin it so no CUDA build is pulled.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

data:
	@test -f $(FMNIST) || { echo "installing Debian package dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist); }

run: setup data
	$(PY) -m research showcase --out runs/showcase

test: setup data
	$(VENV)/bin/lint-imports  # import contracts (pyproject.toml [tool.importlinter])
	$(PY) -m pytest tests

bench: setup data
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) build src/*.egg-info
