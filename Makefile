# The few verbs people type. Every target bootstraps .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH_PIN := torch==2.13.0
SAM2_PIN  := sam2==1.1.0
SCALE ?= default
DEVICE ?= auto

.PHONY: setup bench test test-fast lint fmt lab ui clean

setup: $(VENV)/.installed

# torch first and pinned (an unpinned torch pulls GBs of CUDA wheels on Linux);
# sam2 last, built against that torch without build isolation and without its
# declared torchvision dependency (foodlab never imports torchvision).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(TORCH_PIN)
	$(BIN)/python -m pip install -e ".[dev,notebooks]"
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --no-build-isolation --no-deps $(SAM2_PIN)
	touch $@

bench: setup  ## the before/after benchmark suite on the synthetic data, logged to ./mlflow.db
	$(BIN)/foodlab bench all --scale $(SCALE) --device $(DEVICE)

test: lint  ## the architecture contract and lint, then every test: the package tests, then the notebooks
	$(BIN)/python -m pytest tests && $(BIN)/python -m pytest --nbmake notebooks

lint: setup  ## import-linter's layer contract (pyproject [tool.importlinter]) and ruff
	$(BIN)/lint-imports
	$(BIN)/ruff check .

fmt: setup  ## fix what ruff can (import order included)
	$(BIN)/ruff check --fix .

test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow"

lab: setup  ## JupyterLab on notebooks/ with the project's environment as the kernel
	$(BIN)/jupyter lab notebooks/

ui: setup  ## the MLflow UI on 127.0.0.1:5000 against ./mlflow.db
	$(BIN)/foodlab ui

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
