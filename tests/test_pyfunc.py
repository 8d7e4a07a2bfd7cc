"""The detector as an MLflow Model: logged from a tiny head, loaded by URI in a fresh process, same masks."""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from foodlab import tracking
from foodlab.errors import UsageError
from foodlab.models.commands import add_commands
from foodlab.models.detector import FoodDetector
from foodlab.models.predict import segment

REPO = Path(__file__).resolve().parents[1]
SAM_SIZE = 128
HEAD_SIZE = 64
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def sam2_checkpoint(tmp_path_factory):
    """A tiny-input SAM2 state dict saved once: random weights, the same in every process that loads it."""
    from foodlab.models.sam2_backend import build_sam2_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam2") / "sam2_tiny_128.pt"
    torch.save(build_sam2_model("tiny", device="cpu", image_size=SAM_SIZE).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(1)
    return FoodDetector(device="cpu").save_head(tmp_path_factory.mktemp("head") / "head.pt")


def _detector(head_file, sam2_checkpoint=None):
    return FoodDetector.from_head_file(head_file, device="cpu", sam2_image_size=SAM_SIZE,
                                       sam2_checkpoint=sam2_checkpoint)


def _photos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(((60, 80), (150, 110))):
        img = np.full((h, w, 3), 200, np.uint8)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (30, 120, 200), -1)
        paths.append(folder / f"dish{i}.{'jpg' if i == 0 else 'png'}")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def _log(detector, **kw):
    from foodlab.models.pyfunc import log_detector

    tracking.configure(check=False)
    with tracking.start_run("pyfunc-test") as run:
        info = log_detector(detector, image_size=HEAD_SIZE, **kw)
    return run.info.run_id, info


def _foodlab_predict(src, out, mode, *source):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", str(src), *map(str, source), "--out", str(out), "--mode", mode,
                              "--device", "cpu", "--num-workers", "0"])
    assert args.func(args) == 0


@pytest.mark.slow
def test_model_loaded_in_a_fresh_process_gives_foodlab_predicts_masks(tmp_path, head_file, sam2_checkpoint):
    run_id, info = _log(_detector(head_file, sam2_checkpoint))
    assert info.model_uri == f"runs:/{run_id}/model" or info.model_uri.startswith("models:/")
    paths = _photos(tmp_path / "in")
    for mode in ("sam2", "lightweight"):
        _foodlab_predict(tmp_path / "in", tmp_path / mode, mode, "--weights", head_file, "--image-size", HEAD_SIZE,
                         "--sam2-checkpoint", sam2_checkpoint, "--sam2-image-size", SAM_SIZE)
    code = textwrap.dedent(f"""
        import base64, json, sys
        import mlflow
        model = mlflow.pyfunc.load_model("runs:/{run_id}/model")
        images = [base64.b64encode(open(p, "rb").read()).decode() for p in {[str(p) for p in paths]!r}]
        out = {{mode: model.predict({{"image": images}}, params={{"mode": mode}}).to_dict("list")
               for mode in ("sam2", "lightweight")}}
        json.dump(out, open({str(tmp_path / "pyfunc.json")!r}, "w"))
        assert "foodlab.models.detector" in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    from foodlab.models.pyfunc import decode_mask

    served = json.loads((tmp_path / "pyfunc.json").read_text())
    for mode in ("sam2", "lightweight"):
        assert len(served[mode]["mask"]) == len(paths)
        for path, text in zip(paths, served[mode]["mask"]):
            written = cv2.imread(str(tmp_path / mode / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
            mask = decode_mask(text)
            assert mask.shape == written.shape == cv2.imread(str(path)).shape[:2]
            np.testing.assert_array_equal(mask.astype(np.uint8) * 255, written)


def test_model_records_its_settings_and_takes_arrays(tmp_path, head_file):
    import mlflow

    from foodlab.models.pyfunc import decode_mask, load_detector

    detector = _detector(head_file)
    run_id, _ = _log(detector, class_names=["background", "food"])
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    meta = model.metadata.metadata["foodlab"]
    assert meta["head"] == "fast" and meta["num_classes"] == 1 and meta["class_names"] == ["background", "food"]
    assert meta["image_size"] == HEAD_SIZE and meta["sam2_model_type"] == "tiny" and meta["sam2_checkpoint"] is None
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["image"] and model.metadata.get_params_schema().to_dict()[0]["default"] == "sam2"

    photo = cv2.cvtColor(cv2.imread(str(_photos(tmp_path)[1])), cv2.COLOR_BGR2RGB)
    out = model.predict(pd.DataFrame({"image": [photo]}), params={"mode": "lightweight"})
    expected, score = segment(detector, [photo], mode="lightweight", image_size=HEAD_SIZE)[0]
    np.testing.assert_array_equal(decode_mask(out["mask"][0]), expected)
    assert out["score"][0] == pytest.approx(score, abs=1e-6)

    loaded = load_detector(f"runs:/{run_id}/model", device="cpu")
    assert loaded.image_size == HEAD_SIZE and loaded.class_names == ["background", "food"]
    with pytest.raises(UsageError, match="3 class names for masks with 2 class ids"):
        _log(detector, class_names=["background", "food", "plate"])
    with pytest.raises(UsageError, match="image 0: not base64"):
        model.predict({"image": ["%%%"]}, params={"mode": "lightweight"})
    with pytest.raises(UsageError, match="image 0: .*corrupt|image 0: .*not an image"):
        model.predict({"image": [base64.b64encode(b"hello").decode()]}, params={"mode": "lightweight"})


def test_sam2_checkpoint_is_referenced_or_bundled(tmp_path, head_file):
    import mlflow

    fake = tmp_path / "sam2.pt"
    fake.write_bytes(b"not loaded unless SAM2 runs")
    referenced, _ = _log(_detector(head_file, fake))
    bundled, _ = _log(_detector(head_file, fake), bundle_sam2=True)
    meta = mlflow.pyfunc.load_model(f"runs:/{referenced}/model").metadata.metadata["foodlab"]
    assert meta["sam2_checkpoint"] == str(fake.resolve())
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{bundled}/model", dst_path=str(tmp_path / "dl")))
    assert [p.read_bytes() for p in local.rglob("sam2.pt")] == [fake.read_bytes()]
    fake.unlink()  # referenced and gone: a clear error at load, never a download; the bundled copy still loads
    with pytest.raises(Exception, match="not on this machine"):
        mlflow.pyfunc.load_model(f"runs:/{referenced}/model")
    mlflow.pyfunc.load_model(f"runs:/{bundled}/model")


def _cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_registry_promote_list_and_predict_by_alias(tmp_path, head_file, capsys):
    import mlflow

    from foodlab.models.pyfunc import log_detector

    tracking.configure(check=False)
    runs = []
    for miou in (0.3, 0.7, 0.5):
        with tracking.start_run("registry-test") as run:
            tracking.log_metrics({"val_miou": miou, "val_loss": 1 - miou})
            log_detector(_detector(head_file), image_size=HEAD_SIZE, registered_name="food")
        runs.append(run.info.run_id)
    with tracking.start_run("registry-test"):  # a better run without a model is not a candidate
        tracking.log_metrics({"val_miou": 0.9})
    best = tracking.best_run("registry-test", "val_miou")
    assert best["run_id"] == runs[1] and best["model_uri"] == f"runs:/{runs[1]}/model"
    assert tracking.best_run("registry-test", "val_loss")["run_id"] == runs[1]

    assert _cli("models", "promote", "food") == 0
    assert "version 2" in capsys.readouterr().out
    assert str(mlflow.MlflowClient().get_model_version_by_alias("food", "champion").version) == "2"
    assert _cli("models", "promote", "food", "--version", "3") == 0
    assert _cli("models", "list", "food") == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[-4:]]
    assert rows[0] == ["version", "aliases", "run_id", "val_loss", "val_miou"]
    assert [r[:2] for r in rows[1:]] == [["3", "champion"], ["2", "-"], ["1", "-"]]
    assert rows[2][4] == "0.7000"
    with pytest.raises(UsageError, match="no version 9"):
        tracking.promote("food", version=9)
    with pytest.raises(UsageError, match="no registered model"):
        tracking.promote("nope")

    _photos(tmp_path / "in")
    common = ["--out", None, "--mode", "lightweight", "--device", "cpu", "--num-workers", "0"]
    for source, out in ((["--model", "models:/food@champion"], "by_alias"), (["--weights", head_file], "by_file")):
        argv = ["predict", tmp_path / "in", *source, *common]
        argv[argv.index(None)] = tmp_path / out
        if out == "by_file":
            argv += ["--image-size", HEAD_SIZE]  # the registered model knows its own
        assert _cli(*argv) == 0
    for name in ("dish0_mask.png", "dish1_mask.png"):
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "by_alias" / name), cv2.IMREAD_UNCHANGED),
                                      cv2.imread(str(tmp_path / "by_file" / name), cv2.IMREAD_UNCHANGED))


def test_log_detector_needs_an_active_run(head_file):
    from foodlab.models.pyfunc import log_detector

    tracking.configure(check=False)
    with pytest.raises(UsageError, match="active run"):
        log_detector(_detector(head_file), image_size=HEAD_SIZE)
