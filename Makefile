# The two commands a newcomer needs: `make demo` and `make test`. Everything else here is a step
# they pull in: a virtual environment with the package, and the Fashion-MNIST data set.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test docs

demo: $(INSTALLED) $(FASHION)
	$(PY) -m netshrink.cli demo

test: $(INSTALLED) $(FASHION)
	$(PY) -m pytest -n 2 -q

# The API reference (HTML, docs/api/index.html): the public API and the exports' modules.
# tests/test_api_docs.py builds the same pages, so CI fails on a reference that does not build.
API_MODULES := netshrink netshrink.export.onnx netshrink.export.qdq netshrink.export.c
docs: $(INSTALLED)
	$(PY) -m pdoc $(API_MODULES) -o docs/api

# torch first, exactly the CPU wheel this machine holds: pyproject's range would otherwise pull
# the newest CUDA build (GBs). A torch already in the venv is kept.
TORCH := torch==2.13.0
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(FASHION):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
