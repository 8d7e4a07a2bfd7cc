"""`mlflow models serve` of the champion answers /invocations with the masks foodlab predicts locally.

The real server (``--env-manager local``) on a free loopback port, a real JPEG over HTTP; the
server is always stopped, and every wait is bounded.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from loopback import free_port, wait_until_answering

from foodlab import tracking
from foodlab.data.dataset import read_image
from foodlab.models.detector import FoodDetector
from foodlab.models.predict import segment

REPO = Path(__file__).resolve().parents[1]
SAM_SIZE, HEAD_SIZE = 128, 64
pytestmark = pytest.mark.slow


def _stop(proc: subprocess.Popen) -> None:
    """The server and its uvicorn workers share a process group (start_new_session): stop them all."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _invoke(url: str, jpeg: bytes, mode: str) -> dict:
    payload = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(jpeg).decode()]]},
               "params": {"mode": mode}}
    req = urllib.request.Request(url + "/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["predictions"][0]


def test_served_champion_answers_like_local_predict(tmp_path):
    from foodlab.models.pyfunc import decode_mask, log_detector
    from foodlab.models.sam2_backend import build_sam2_model

    torch.manual_seed(0)
    sam2_ckpt = tmp_path / "sam2_tiny_128.pt"  # random weights, but the same ones in the server
    torch.save(build_sam2_model("tiny", device="cpu", image_size=SAM_SIZE).state_dict(), sam2_ckpt)
    detector = FoodDetector(device="cpu", sam2_image_size=SAM_SIZE, sam2_checkpoint=sam2_ckpt)
    detector.head_trained = True  # a random head still makes prompts: what matters is both sides agree
    tracking.configure(check=False)
    with tracking.start_run("serving-test"):
        tracking.log_metrics({"val_miou": 0.5})
        log_detector(detector, image_size=HEAD_SIZE, registered_name="food")
    tracking.promote("food")

    photo = np.full((120, 160, 3), 200, np.uint8)
    cv2.circle(photo, (70, 60), 35, (30, 120, 200), -1)
    jpeg_path = tmp_path / "dish.jpg"
    cv2.imwrite(str(jpeg_path), photo)
    rgb = read_image(jpeg_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps({"device": "cpu"}),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}  # its uvicorn
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/food@champion",
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_answering(url + "/ping", proc, what="mlflow models serve", timeout_s=180, log_path=log_path)
            for mode in ("lightweight", "sam2"):
                served = _invoke(url, jpeg_path.read_bytes(), mode)
                local_mask, local_score = segment(detector, [rgb], mode=mode, image_size=HEAD_SIZE)[0]
                mask = decode_mask(served["mask"])
                assert mask.shape == (120, 160)
                np.testing.assert_array_equal(mask, local_mask)
                assert served["score"] == pytest.approx(local_score, abs=1e-5)
        finally:
            _stop(proc)
