"""Every user error ends in one line on stderr with the right exit code, never a traceback.

One table of bad invocations across every subcommand; each row is run in-process through
``foodlab.cli.main`` (what the console script runs). Exit 2: refused before any work; exit 1:
failed at run time.
"""
from __future__ import annotations

import socket

import pytest
from loopback import free_port

from foodlab.cli import main


@pytest.fixture
def bad_experiments(tmp_path):
    (tmp_path / "unknown_override.yaml").write_text(
        "benchmark: init_time\nbaseline: decode\ncandidates: [manifest_first_open]\nmetrics: [init_s]\n"
        "variants: [decode, manifest_first_open]\nscales: {smoke: {nn: 3}}\n")
    (tmp_path / "wrong_type.yaml").write_text(
        "benchmark: init_time\nbaseline: decode\ncandidates: [manifest_first_open]\nmetrics: [init_s]\n"
        "variants: [decode, manifest_first_open]\nscales: {smoke: {n: many}}\n")
    (tmp_path / "unknown_metric.yaml").write_text(
        "benchmark: init_time\nbaseline: decode\ncandidates: [manifest_first_open]\nmetrics: [init_seconds]\n"
        "variants: [decode, manifest_first_open]\n")
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "dish.jpg"), np.full((16, 16, 3), 128, np.uint8))
    return tmp_path


def _cases(tmp):
    dead = f"http://127.0.0.1:{free_port()}"
    train = ["train", "--max-steps", "1", "--no-progress"]
    return [
        # (id, argv, env, expected exit code, words the message must contain)
        ("bad int", ["train", "--epochs", "abc"], {}, 2, "--epochs"),
        ("cuda on cpu", [*train, "--device", "cuda"], {}, 2, "cuda"),
        ("batch size 0", [*train, "--batch-size", "0"], {}, 2, "batch"),
        ("epochs 0", [*train, "--epochs", "0"], {}, 2, "epochs"),
        ("negative workers", [*train, "--num-workers", "-1"], {}, 2, "workers"),
        ("nan lr", [*train, "--lr", "nan"], {}, 2, "lr"),
        ("zero image size", [*train, "--image-size", "0"], {}, 2, "image"),
        ("zero classes", [*train, "--num-classes", "0"], {}, 2, "classes"),
        ("val fraction 0", [*train, "--val-fraction", "0"], {}, 2, "val"),
        ("missing data folder", [*train, "--data", str(tmp / "nope")], {}, 2, "nope"),
        ("unwritable out dir", [*train, "--out-dir", str(tmp / "afile" / "runs")], {}, 2, "afile"),
        ("missing predict weights", ["predict", str(tmp / "dish.jpg"), "--weights", str(tmp / "w.pt"),
                                     "--out", str(tmp / "out")], {}, 2, "w.pt"),
        ("missing predict input", ["predict", str(tmp / "nope.jpg"), "--model", "runs:/0123/model",
                                   "--out", str(tmp / "out")], {}, 2, "nope"),
        ("missing data info root", ["data", "info", str(tmp / "nope")], {}, 2, "nope"),
        ("unknown override key", ["run", str(tmp / "unknown_override.yaml"), "--scale", "smoke", "--no-mlflow"],
         {}, 2, "nn"),
        ("override of the wrong type", ["run", str(tmp / "wrong_type.yaml"), "--scale", "smoke", "--no-mlflow"],
         {}, 2, "n"),
        ("metric nobody reports", ["run", str(tmp / "unknown_metric.yaml"), "--scale", "smoke", "--no-mlflow"],
         {}, 2, "init_seconds"),
        ("zero threads", ["bench", "precision", "--threads", "0", "--scale", "smoke", "--no-mlflow"], {}, 2,
         "--threads"),
        ("experiment typo", ["bench", "init", "--experiment", "dataset_int", "--scale", "smoke", "--no-mlflow"],
         {}, 2, "dataset_int"),
        ("dead server: run", ["run", "dataset_init", "--scale", "smoke"], {"MLFLOW_TRACKING_URI": dead}, 1, dead),
        ("dead server: report", ["report"], {"MLFLOW_TRACKING_URI": dead}, 1, dead),
        ("dead server: ui", ["ui"], {"MLFLOW_TRACKING_URI": dead}, 1, dead),
    ]


CASE_IDS = [c[0] for c in _cases(__import__("pathlib").Path("/tmp"))]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_invocation_is_one_line_with_its_exit_code(case, bad_experiments, monkeypatch, capsys):
    _, argv, env, code, words = next(c for c in _cases(bad_experiments) if c[0] == case)
    monkeypatch.chdir(bad_experiments)
    monkeypatch.delenv("FOODLAB_DEBUG", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        got = main(argv)
    except SystemExit as exc:   # argparse's own errors
        got = exc.code
    out = capsys.readouterr()
    err_lines = [line for line in out.err.splitlines() if "error" in line.lower()]
    assert got == code, (got, out.err)
    assert "Traceback" not in out.err + out.out
    assert len(err_lines) == 1, out.err
    assert words in err_lines[0], err_lines[0]


def test_ui_on_a_port_in_use_names_the_port(bad_experiments, monkeypatch, capsys):
    monkeypatch.chdir(bad_experiments)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        got = main(["ui", "--port", str(port)])
    err = capsys.readouterr().err
    assert got == 2 and str(port) in err and "Traceback" not in err   # a port the user picked: usage


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from foodlab.errors import UsageError

    monkeypatch.setenv("FOODLAB_DEBUG", "1")
    with pytest.raises(UsageError):
        main(["train", "--max-steps", "1", "--data", str(tmp_path / "nope"), "--no-progress"])


def test_unexpected_errors_are_named_as_such(monkeypatch, capsys):
    import foodlab.data.commands as data_commands

    def boom(args):
        raise KeyError("surprise")
    monkeypatch.setattr(data_commands, "_info", boom)
    monkeypatch.delenv("FOODLAB_DEBUG", raising=False)
    assert main(["data", "info", "x"]) == 1
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and "--debug" in err and "Traceback" not in err


def test_an_error_raised_in_a_dataloader_worker_prints_its_own_message(monkeypatch, capsys):
    """torch re-raises a worker's exception as type(exc)(message with the worker's traceback)."""
    import foodlab.data.commands as data_commands
    from foodlab.data.validity import DatasetError

    def from_worker(args):
        raise DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\nfoodlab.data.validity.DatasetError: "
                           "data: 9 of the 12 images seen so far are bad")
    monkeypatch.setattr(data_commands, "_info", from_worker)
    monkeypatch.delenv("FOODLAB_DEBUG", raising=False)
    assert main(["data", "info", "x"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "foodlab data: error: data: 9 of the 12 images seen so far are bad"


def test_a_bad_sample_rebuilt_from_one_string_is_a_dataset_error():
    from foodlab.data.dataset import BadSample
    from foodlab.data.validity import DatasetError

    again = BadSample("a.jpg: truncated JPEG")   # how torch re-raises it from a worker
    assert isinstance(again, DatasetError) and str(again) == "a.jpg: truncated JPEG"
    assert BadSample("a.jpg", "truncated JPEG").path == "a.jpg"
