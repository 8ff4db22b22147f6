# merge-workbench: `make lab` to explore, `make test` to check, `make demo` for the headless job.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := merge-workbench

.PHONY: lab test demo lint checkpoints clean

# One environment for everything: torch/torchvision pinned (they are on this machine's disk),
# the package in editable mode with its dev extras, and a Jupyter kernel registered inside it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))"
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/workbench demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Regenerate the shipped quickstart checkpoints (bit-identical on the same CPU kind and thread count).
checkpoints: $(STAMP)
	$(VENV)/bin/workbench train cnn --dataset mnist-5k --seeds 0 1 2 3 --width 2 --epochs 15 --lr 0.2 \
		--batch-size 128 --translate 2 --out data/models --overwrite

clean:
	rm -rf $(VENV) figures .pytest_cache
