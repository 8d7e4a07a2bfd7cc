"""FoodDetector: a lightweight head that trains fast, and SAM2 for inference prompted by it.

Modes:
- ``use_lightweight_head=True`` (default): ``model(images)`` runs only the head, in
  train and eval alike (so validation stays fast); SAM2 is built lazily, on the
  first ``predict(mode="sam2")``, and never holds training memory.
- ``use_lightweight_head=False``: ``model(images, masks=gt)`` runs the full SAM2
  (encoder, prompt encoder, mask decoder) with gradients, batched, prompted from the
  ground truth; ``freeze_image_encoder=True`` trains only prompt encoder + decoder.
- ``predict(images, mode="sam2")``: SAM2 prompted by the head's mask (boxes and
  points per component), or by the whole image when the head is untrained
  (``head_trained`` False: set by ``load_head`` / ``from_head_file``, or by the trainer
  once it has taken a step). ``mode="lightweight"`` returns the head's own mask.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from foodlab.atomic import atomic_write
from foodlab.devices import resolve_device
from foodlab.labels import class_ids
from foodlab.models.lightweight import build_head

log = logging.getLogger(__name__)


def _confidence(logits: torch.Tensor) -> torch.Tensor:
    """Per-image score for the head's mask: mean probability of the predicted class over pixels."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.maximum(p, 1 - p).mean(dim=(1, 2))
    return torch.softmax(logits, dim=1).amax(dim=1).mean(dim=(1, 2))


class FoodDetector(nn.Module):
    def __init__(self, use_lightweight_head: bool = True, head: str = "fast", sam2_model_type: str = "tiny",
                 sam2_checkpoint: str | Path | None = None, num_classes: int = 1, device="auto",
                 freeze_image_encoder: bool = False, sam2_image_size: int | None = None, prompt_seed: int = 0):
        super().__init__()
        self.device = resolve_device(device)
        self.use_lightweight_head = use_lightweight_head
        self.head_name = head
        self.num_classes = num_classes
        self.sam2_model_type = sam2_model_type
        self.sam2_checkpoint = sam2_checkpoint
        self.sam2_image_size = sam2_image_size
        self.freeze_image_encoder = freeze_image_encoder
        self.head_trained = False
        self._rng = np.random.default_rng(prompt_seed)  # training prompts: varied per step, reproducible
        self.head = build_head(head, num_classes)
        self._sam: nn.Module | None = None
        if not use_lightweight_head:  # SAM2 is what trains: build it now so the optimizer sees it
            self.build_sam()
        self.to(self.device)

    # ------------------------------------------------------------ SAM2 (lazy)
    def build_sam(self) -> nn.Module:
        """Build SAM2 if it is not built yet (it costs memory, so only when something needs it).

        Trainable parts (head off) follow ``sam2_backend.set_trainable``; as the head's
        prompt follower it is frozen and in eval.
        """
        if self._sam is None:
            from foodlab.models.sam2_backend import build_sam2_model, set_trainable

            sam = build_sam2_model(self.sam2_model_type, self.sam2_checkpoint, self.device,
                                   image_size=self.sam2_image_size)
            if self.use_lightweight_head:
                sam.requires_grad_(False)
            else:
                set_trainable(sam, image_encoder=not self.freeze_image_encoder)
            sam.train(self.training and not self.use_lightweight_head)
            self._sam = sam
        return self._sam

    @property
    def sam(self) -> nn.Module:
        """The SAM2 model (built on first use by ``build_sam``)."""
        return self.build_sam()

    @property
    def sam_built(self) -> bool:
        """Whether SAM2 exists yet: the head-on path never builds it for training or lightweight predictions."""
        return self._sam is not None

    def train(self, mode: bool = True) -> FoodDetector:
        super().train(mode)
        if self._sam is not None and self.use_lightweight_head:
            self._sam.eval()  # inference-only SAM2 stays in eval
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should update: the head, or SAM2's unfrozen parameters."""
        params = self.head.parameters() if self.use_lightweight_head else self.sam.parameters()
        return [p for p in params if p.requires_grad]

    # ------------------------------------------------------------ forward / predict
    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes, H, W): the head, or (head off) SAM2 prompted from ``masks``."""
        if self.use_lightweight_head:
            return self.head(images)
        if masks is None:
            if self.training:
                raise ValueError("training SAM2 (use_lightweight_head=False) needs masks=ground truth for prompts")
            masks = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long, device=images.device)
        from foodlab.models.sam2_backend import sam2_logits

        return sam2_logits(self.sam, images, masks, self.num_classes,
                           rng=self._rng if self.training else np.random.default_rng(0))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, mode: str = "sam2") -> dict[str, torch.Tensor]:
        """{"masks": (B, H, W) long class ids, "scores": (B,) float} at the input resolution."""
        if mode not in ("sam2", "lightweight"):
            raise ValueError(f"mode must be 'sam2' or 'lightweight', got {mode!r}")
        was_training = self.training
        self.eval()
        try:
            images = images.to(self.device)
            if mode == "lightweight":
                logits = self.head(images)
                return {"masks": class_ids(logits), "scores": _confidence(logits)}
            masks, scores = self.refine(list(images), images)
            return {"masks": torch.stack(masks), "scores": scores}
        finally:
            self.train(was_training)

    @torch.no_grad()
    def refine(self, photos: list[torch.Tensor], head_input: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """SAM2's masks for ``photos`` ((3, H_i, W_i) in [0, 1], any sizes), prompted by the head's mask on
        ``head_input`` (the same photos at the head's size): ([(H_i, W_i) class ids], scores (B,)).

        An untrained head has nothing to say, so SAM2 gets a whole-photo box instead.
        """
        from foodlab.models.sam2_backend import photo_masks

        head_input = head_input.to(self.device)
        if self.head_trained:
            prompt_masks = class_ids(self.head(head_input))
        else:
            prompt_masks = torch.zeros(head_input.shape[0], *head_input.shape[-2:], dtype=torch.long,
                                       device=self.device)
        return photo_masks(self.sam, [p.to(self.device) for p in photos], prompt_masks, self.num_classes)

    # ------------------------------------------------------------ head checkpoints
    def save_head(self, path: str | Path) -> Path:
        """Head name, classes and weights (what ``from_head_file`` needs), written atomically."""
        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.head.state_dict().items()}
        with atomic_write(path) as f:
            torch.save({"head": self.head_name, "num_classes": self.num_classes, "state_dict": state}, f)
        return path

    @staticmethod
    def _read_head(path: str | Path) -> dict:
        """A head file (``save_head``, ``model.pt``) or a training checkpoint (``best.pt``/``last.pt``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"head weights not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors vary by content; name the file and the expectation
            raise ValueError(f"{path} is not a foodlab head or training checkpoint ({type(exc).__name__})") from exc
        if isinstance(ckpt, dict) and {"model", "configs"} <= set(ckpt):
            model_cfg = ckpt["configs"].get("model", {})
            if not model_cfg.get("use_lightweight_head", False):
                raise ValueError(f"{path} is a full-SAM2 training checkpoint; it holds no lightweight head")
            ckpt = {"head": model_cfg["head"], "num_classes": model_cfg["num_classes"],
                    "state_dict": {k[len("head."):]: v for k, v in ckpt["model"].items() if k.startswith("head.")}}
        if not isinstance(ckpt, dict) or not {"head", "num_classes", "state_dict"} <= set(ckpt):
            raise ValueError(f"{path} is not a foodlab head checkpoint (needs head, num_classes, state_dict)")
        return ckpt

    @classmethod
    def from_head_file(cls, path: str | Path, **kwargs) -> FoodDetector:
        """A detector whose head matches the file (name, classes) with its weights; kwargs go to ``__init__``."""
        ckpt = cls._read_head(path)
        detector = cls(head=ckpt["head"], num_classes=int(ckpt["num_classes"]), **kwargs)
        detector._load_head_state(ckpt)
        return detector

    def load_head(self, path: str | Path) -> FoodDetector:
        """Load head weights into this detector; the file must hold the same head and number of classes."""
        ckpt = self._read_head(path)
        if (ckpt["head"], int(ckpt["num_classes"])) != (self.head_name, self.num_classes):
            raise ValueError(f"{path} holds a {ckpt['head']!r} head with {ckpt['num_classes']} classes; this "
                             f"detector has {self.head_name!r} with {self.num_classes}")
        self._load_head_state(ckpt)
        return self

    def _load_head_state(self, ckpt: dict) -> None:
        self.head.load_state_dict(ckpt["state_dict"])
        self.head_trained = True
