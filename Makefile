# merge-workbench: `make lab` to explore, `make test` to check, `make demo` for the headless job.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := merge-workbench

.PHONY: lab test demo lint checkpoints clean

# One environment for everything: the package in editable mode with its dev extras, torch and
# torchvision held to the tested versions by constraints.txt (pyproject.toml asks for ranges),
# and the notebooks' Jupyter kernel registered inside it (environment.yml's header has the
# same command for conda users).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
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
