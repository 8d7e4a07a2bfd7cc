"""Test isolation: no test touches the user's ./mlflow.db or ~/.cache/foodlab."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _foodlab_cache(tmp_path_factory):
    """One synthetic-data/manifest cache per test session, shared by tests (generation is reused)."""
    if "FOODLAB_TEST_KEEP_CACHE" not in os.environ:
        os.environ["FOODLAB_CACHE"] = str(tmp_path_factory.mktemp("foodlab_cache"))
    yield


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path, monkeypatch):
    """Every test gets its own SQLite tracking DB (SQLite locks under concurrent writers)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
