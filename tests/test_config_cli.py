from __future__ import annotations

import subprocess
import sys

import pytest

from foodlab import __version__
from foodlab.cli import build_parser
from foodlab.config import Config, DataConfig, TrainConfig, from_dict, load_yaml


def test_load_yaml_reads_sections_into_dataclasses(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  image_size: 256\n  num_classes: 4\ntrain:\n  epochs: 3\n  amp: false\n")
    cfg = load_yaml(path)
    assert isinstance(cfg, Config)
    assert cfg.data.image_size == 256 and cfg.data.num_classes == 4
    assert cfg.train.epochs == 3 and cfg.train.amp is False
    assert cfg.model.head == "fast"  # untouched sections keep their defaults


def test_unknown_keys_and_sections_are_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match="imgsize"):
        from_dict(DataConfig, {"imgsize": 3})
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ValueError, match="trian"):
        load_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml(path)


def test_from_dict_builds_defaults_for_missing_values():
    assert from_dict(TrainConfig, None) == TrainConfig()


def test_every_area_registers_its_commands():
    parser = build_parser()
    for command in ("data", "predict", "embed", "train", "distill", "bench", "run", "report", "ui"):
        with pytest.raises(SystemExit) as done:  # each subcommand parses its own --help
            parser.parse_args([command, "--help"])
        assert done.value.code == 0, f"foodlab {command} is missing"


def test_python_dash_m_foodlab_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "foodlab", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert out.stdout.strip() == f"foodlab {__version__}"


def test_cli_start_up_does_not_import_heavy_modules():
    code = ("import sys; from foodlab.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('torch', 'sam2', 'mlflow', 'cv2', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
