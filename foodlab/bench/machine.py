"""What machine a benchmark ran on, in the terms that change its numbers.

bf16 autocast and channels_last help or hurt depending on the CPU's instructions (AMX, AVX-512
BF16) or the GPU's compute capability; reference reports from different machines are not
comparable, so every run is tagged with these facts and the report prints them in its header.
"""
from __future__ import annotations

import os

PRECISION_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def precision_features(device) -> str:
    """'cuda sm_90', 'mps', or the precision-relevant CPU flags present ('none' when none are)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm_{major}{minor}"
    if device.type == "mps":
        return "mps"
    from foodlab.devices import cpu_flags

    flags = cpu_flags()
    return ",".join(f for f in PRECISION_FLAGS if f in flags) or "none"


def machine_tags(device) -> dict[str, str]:
    from foodlab.devices import device_name

    return {"foodlab.device_name": device_name(device), "foodlab.precision_features": precision_features(device),
            "foodlab.cpu_count": str(os.cpu_count() or 1)}
