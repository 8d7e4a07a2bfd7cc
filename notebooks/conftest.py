"""Under ``pytest --nbmake notebooks``: notebooks run at smoke scale against a throwaway tracking store.

nbmake starts each kernel as a subprocess that inherits this process's environment, so
setting os.environ here reaches the notebooks; nothing is written into notebooks/ or
the user's ./mlflow.db, ~/.cache/foodlab or ./runs.
"""
from __future__ import annotations

import os
import shutil
import tempfile

_TMP = None


def pytest_configure(config):
    global _TMP
    _TMP = tempfile.mkdtemp(prefix="foodlab-nbtest-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_TMP}/mlflow.db"
    os.environ["FOODLAB_RUNS_DIR"] = os.path.join(_TMP, "runs")
    os.environ.setdefault("FOODLAB_SCALE", "smoke")
    if "FOODLAB_TEST_KEEP_CACHE" not in os.environ:
        os.environ["FOODLAB_CACHE"] = os.path.join(_TMP, "cache")


def pytest_unconfigure(config):
    if _TMP:
        shutil.rmtree(_TMP, ignore_errors=True)
