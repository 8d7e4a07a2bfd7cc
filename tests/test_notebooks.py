"""Notebooks are committed clean, thin, and run on the kernel that has foodlab installed."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = {"01_dataset_init", "02_training_throughput", "03_memory", "04_train_and_infer", "05_compare_runs",
            "06_use_best_model"}


def test_all_notebooks_are_there():
    assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_thin_and_scaled_from_the_environment(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'SCALE = os.environ.get("FOODLAB_SCALE", "smoke")' in code
    assert "tracking.configure()" in code  # the tracking URI comes from the environment
    assert "import mlflow" not in code  # only foodlab.tracking talks to MLflow
    assert "def " not in code and "class " not in code  # logic lives in foodlab, not here


def test_python3_kernelspec_is_this_environment():
    """The kernel `make lab` / nbmake start for "python3" is this venv's Python (where foodlab is)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = spec.argv[0]
    # jupyter_client replaces a bare "python"/"python3" with sys.executable of the launching process
    assert exe in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}") or \
        Path(exe).resolve() == Path(sys.executable).resolve(), spec.argv


@pytest.mark.slow
def test_kernel_imports_foodlab_from_this_environment(tmp_path):
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("import sys, foodlab\nprint(sys.prefix)\nprint(foodlab.__file__)")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    prefix, module_file = nb.cells[0].outputs[0]["text"].split()
    assert prefix == sys.prefix
    import foodlab

    assert os.path.samefile(module_file, foodlab.__file__)
