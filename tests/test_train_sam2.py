"""Full-SAM2 training through the same loop: encoder frozen, and decoder-only on cached embeddings.

Random SAM2 weights at a 128 px SAM2 input: plumbing, not quality.
"""
from __future__ import annotations

import pytest
import torch

from foodlab.config import DataConfig, ModelConfig, TrainConfig
from foodlab.train.build import sam2_decoder_setup
from foodlab.train.loop import train

DATA = DataConfig(synth_n=4, synth_size=32, image_size=32)
MODEL = ModelConfig(use_lightweight_head=False, freeze_image_encoder=True)


@pytest.mark.slow
def test_full_sam2_with_frozen_encoder_trains_only_prompt_side(tmp_path):
    from foodlab.models.detector import FoodDetector

    model = FoodDetector(use_lightweight_head=False, freeze_image_encoder=True, device="cpu", sam2_image_size=128)
    enc = {k: v.clone() for k, v in model.sam.image_encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in model.sam.sam_mask_decoder.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=2, device="cpu", num_workers=0, out_dir=str(tmp_path), val_fraction=0.5)
    r = train(DATA, MODEL, cfg, model=model, max_steps=1, progress=False, track=False)
    assert r.steps == 1 and "val_miou" in r.metrics
    assert all(torch.equal(v, model.sam.image_encoder.state_dict()[k]) for k, v in enc.items())
    assert any(not torch.equal(v, model.sam.sam_mask_decoder.state_dict()[k]) for k, v in dec.items())


@pytest.mark.slow
def test_decoder_only_training_on_cached_embeddings(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=2, device="cpu", num_workers=0, out_dir=str(tmp_path), val_fraction=0.5,
                      sam2_cached_embeddings=True)
    setup = sam2_decoder_setup(DATA, MODEL, cfg, torch.device("cpu"), sam2_image_size=128)
    embeds = list((tmp_path / "sam2_embeddings").glob("*/meta.json"))
    assert len(embeds) == 1
    trainable = {n for n, p in setup["model"].named_parameters() if p.requires_grad}
    assert trainable and all(".sam_mask_decoder." in f".{n}" or ".sam_prompt_encoder." in f".{n}" for n in trainable)
    assert not any("conv_s0" in n or "image_encoder" in n for n in trainable)
    r = train(DATA, MODEL, cfg, progress=False, track=False, **setup)
    assert r.steps == 2 and r.epochs == 2 and r.last_checkpoint.is_file()
