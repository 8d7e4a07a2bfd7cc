"""foodlab's MLflow Model flavor: the trained detector as a pyfunc that loads by URI, registers and serves.

``log_detector`` logs a ``FoodDetector`` into the active run as an MLflow Model; ``FoodlabModel``
is what ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run. Both go through
``predict.segment``, so a served model gives the masks ``foodlab predict`` writes.

Contract (the model's signature):
- input: a column ``image``, one photo per row: a base64 JPEG/PNG string (REST, any
  client), or, from Python, a uint8 RGB array (H, W, 3) in the same column
  (``model.predict(pd.DataFrame({"image": [array, ...]}))``);
- param ``mode``: ``sam2`` (default; SAM2 prompted by the head) or ``lightweight``;
- output per row: ``mask``, a base64 PNG of class ids (0 background, 1..C-1 food) at the
  photo's size, and ``score``.

The model records what rebuilding the detector needs (``model_config``, also readable in the
MLmodel file): head type, number of classes and their names when known, the training image
size, SAM2's model type, and the SAM2 checkpoint. A checkpoint is bundled into the model on
request, else referenced by its path; it is never downloaded, and without one SAM2 has random
weights. ``model_config`` keys can be overridden at load time (``device``, ``sam2_checkpoint``,
``sam2_image_size``), e.g. through ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` when serving.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from foodlab import __version__, tracking
from foodlab.errors import FoodlabError, UsageError

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the artifact path inside the run: runs:/<run id>/model
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image")]),
    outputs=Schema([ColSpec("string", "mask"), ColSpec("double", "score")]),
    params=ParamSchema([ParamSpec("mode", "string", "sam2")]),
)


def encode_png(array: np.ndarray) -> str:
    """uint8 (H, W) or RGB (H, W, 3) -> base64 PNG (lossless: class ids survive)."""
    import cv2

    img = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FoodlabError(f"cannot encode a {array.shape} {array.dtype} array as PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_mask(text: str) -> np.ndarray:
    """A ``mask`` output back to uint8 class ids (H, W)."""
    import cv2

    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


def _decode_photo(value: Any, row: int) -> np.ndarray:
    """One input cell -> RGB uint8 (H, W, 3), decoded by the same rules as ``foodlab predict``."""
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise UsageError(f"image {row}: arrays must be uint8 RGB (H, W, 3), got {value.dtype} {value.shape}")
        return value
    if not isinstance(value, (str, bytes)):
        raise UsageError(f"image {row}: expected a base64 JPEG/PNG string or a uint8 array, got {type(value).__name__}")
    if isinstance(value, str) and value.startswith("data:"):  # a data URL: data:image/jpeg;base64,...
        value = value.split(",", 1)[-1]
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError as e:
        raise UsageError(f"image {row}: not base64 ({e})") from None
    from foodlab.data.dataset import BadSample, read_image

    # read_image reads a path; through a temp file the EXIF, 16-bit, gray and RGBA rules stay the one copy
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(data)
        f.flush()
        try:
            return read_image(f.name)
        except BadSample as e:
            raise UsageError(f"image {row}: {e.reason}") from None


def _cells(column) -> list:
    """One photo per entry. MLflow turns a dict input ({"image": [a, b]}, REST "inputs") into a single row
    holding the list, so lists (and arrays of strings) inside a cell are unpacked; uint8 arrays are photos."""
    cells = []
    for v in (column if isinstance(column, (list, tuple, pd.Series, np.ndarray)) else [column]):
        if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.dtype.kind in "OUS"):
            cells.extend(v)
        else:
            cells.append(v)
    return cells


class FoodlabModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: rebuilds the detector from the logged head (+ SAM2 settings) and segments photos."""

    def load_context(self, context) -> None:
        from foodlab.models.detector import FoodDetector

        cfg = dict(context.model_config or {})
        checkpoint = context.artifacts.get("sam2_checkpoint") or cfg.get("sam2_checkpoint")
        if checkpoint and not Path(checkpoint).is_file():
            raise FoodlabError(f"this model references the SAM2 checkpoint {checkpoint}, which is not on this machine;"
                               " copy it there or load with model_config={'sam2_checkpoint': PATH}")
        self.detector = FoodDetector.from_head_file(context.artifacts["head"],
                                                    sam2_model_type=cfg.get("sam2_model_type", "tiny"),
                             sam2_checkpoint=checkpoint or None, device=cfg.get("device", "auto"),
                             sam2_image_size=cfg.get("sam2_image_size"))
        self.detector.eval()
        self.image_size = int(cfg.get("image_size", 512))
        self.class_names = cfg.get("class_names")

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from foodlab.models.predict import segment

        images = model_input["image"] if isinstance(model_input, (pd.DataFrame, dict)) else model_input
        photos = [_decode_photo(v, i) for i, v in enumerate(_cells(images))]
        mode = (params or {}).get("mode") or "sam2"
        results = segment(self.detector, photos, mode=mode, image_size=self.image_size)
        return pd.DataFrame({"mask": [encode_png(m) for m, _ in results], "score": [float(s) for _, s in results]})


def _input_example(size: int = 32) -> pd.DataFrame:
    """A small plate: what a REST client sends (the example is also what MLflow validates the model with)."""
    import cv2

    img = np.full((size, size, 3), 200, np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, (200, 120, 30), -1)
    _, buf = cv2.imencode(".jpg", img)
    return pd.DataFrame({"image": [base64.b64encode(buf.tobytes()).decode("ascii")]})


def log_detector(detector, *, image_size: int, class_names: list[str] | None = None,
                 registered_name: str | None = None, bundle_sam2: bool = False, name: str = MODEL_NAME):
    """Log ``detector`` (its lightweight head + SAM2 settings) as an MLflow Model in the active run.

    ``image_size``: the resolution the head trained at (the model runs it there).
    ``class_names``: one per mask class id, background first (binary: 2 names).
    ``registered_name``: also register it as a new version of that registered model.
    ``bundle_sam2``: copy the SAM2 checkpoint into the model (else it is referenced by path).
    Returns MLflow's ``ModelInfo`` (``model_uri`` is ``runs:/<run id>/model``).
    """
    ids = max(2, int(detector.num_classes))  # a binary head (num_classes 1) writes ids 0 and 1
    if class_names is not None and len(class_names) != ids:
        raise UsageError(f"{len(class_names)} class names for masks with {ids} class ids (0 = background)")
    if mlflow.active_run() is None:  # else MLflow would log a run-less model and set_tags would start a run
        raise UsageError("log_detector logs into the active run: call it inside tracking.start_run(...)")
    checkpoint = getattr(detector, "sam2_checkpoint", None)
    checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None
    if bundle_sam2 and not checkpoint:
        raise UsageError("bundle_sam2 needs a detector built with a SAM2 checkpoint (there is none to bundle)")
    config = {
        "head": detector.head_name, "num_classes": int(detector.num_classes), "class_names": class_names,
        "image_size": int(image_size), "sam2_model_type": detector.sam2_model_type,
        "sam2_checkpoint": None if bundle_sam2 else checkpoint, "sam2_image_size": detector.sam2_image_size,
        "device": "auto",
    }
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"head": str(detector.save_head(Path(tmp) / "head.pt"))}
        if bundle_sam2:
            artifacts["sam2_checkpoint"] = checkpoint
        info = mlflow.pyfunc.log_model(
            name=name, python_model=FoodlabModel(), artifacts=artifacts, model_config=config,
            signature=SIGNATURE, input_example=(_input_example(), {"mode": "lightweight"}),
            registered_model_name=registered_name, metadata={"foodlab": config, "foodlab_version": __version__},
            pip_requirements=[f"foodlab=={__version__}"],
        )
    tracking.set_tags({tracking.MODEL_TAG: name})  # tracking.best_run finds runs a registry can take
    log.info("logged the detector as an MLflow Model: %s", info.model_uri)
    return info


@dataclasses.dataclass
class LoadedDetector:
    detector: Any  # FoodDetector
    image_size: int
    class_names: list[str] | None


def load_detector(uri: str, **overrides) -> LoadedDetector:
    """The detector inside an MLflow Model (``models:/NAME@champion``, ``runs:/<id>/model``), for ``predict --model``.

    ``overrides`` replace the model's own settings when not None (``sam2_checkpoint``,
    ``sam2_model_type``, ``sam2_image_size``, ``device``).
    """
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items() if v is not None}
    tracking.configure(check=uri.startswith("models:/"))  # models:/ resolves through the tracking server
    try:
        model = mlflow.pyfunc.load_model(uri, model_config=config or None)
    except mlflow.exceptions.MlflowException as e:
        raise UsageError(f"cannot load the model {uri}: {str(e).splitlines()[0]}") from None
    inner = model.unwrap_python_model()
    if not isinstance(inner, FoodlabModel):
        raise UsageError(f"{uri} is not a foodlab model (it wraps {type(inner).__name__})")
    return LoadedDetector(inner.detector, inner.image_size, inner.class_names)
