"""Device selection: cuda > mps > cpu, explicit devices never fall back, per-device precision.

The machine has neither CUDA nor MPS, so only those availability checks are mocked.
"""
from __future__ import annotations

import pytest
import torch

from foodlab import devices
from foodlab.devices import default_amp
from foodlab.errors import UsageError


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_is_cpu_without_accelerators(no_accelerators):
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device(None) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cuda", "mps", "cuda:1"])
def test_explicit_missing_device_is_a_usage_error_not_a_fallback(no_accelerators, name):
    with pytest.raises(UsageError, match=name.split(":")[0]):
        devices.resolve_device(name)


def test_unknown_device_name():
    with pytest.raises(UsageError, match="unknown device"):
        devices.resolve_device("tpu")


def test_explicit_cpu_and_device_objects_pass_through():
    assert devices.resolve_device("CPU") == torch.device("cpu")
    dev = torch.device("cuda", 3)
    assert devices.resolve_device(dev) is dev


def test_autocast_dtype_and_grad_scaler_per_device(monkeypatch):
    cpu = torch.device("cpu")
    assert devices.autocast_dtype(cpu) == torch.bfloat16
    assert not devices.needs_grad_scaler(cpu, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    cuda = torch.device("cuda")
    assert devices.autocast_dtype(cuda) == torch.float16  # an older GPU: fp16 ...
    assert devices.needs_grad_scaler(cuda, torch.float16)  # ... which needs loss scaling
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.autocast_dtype(cuda) == torch.bfloat16
    assert not devices.needs_grad_scaler(cuda, torch.bfloat16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.autocast_dtype(torch.device("mps")) == torch.float16
    assert devices.needs_grad_scaler(torch.device("mps"), torch.float16)


def test_default_amp_follows_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert default_amp(torch.device("cuda"))
    # CPU: on only with native bf16 instructions, which this reads from /proc/cpuinfo
    monkeypatch.setattr(devices, "cpuinfo", lambda: "flags: fpu avx2")
    assert not default_amp(torch.device("cpu"))
    monkeypatch.setattr(devices, "cpuinfo", lambda: "flags: fpu avx512_bf16")
    assert default_amp(torch.device("cpu"))


def test_autocast_context_is_noop_without_dtype():
    with devices.autocast(torch.device("cpu"), None):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    with devices.autocast(torch.device("cpu"), torch.bfloat16):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16


def test_device_name_for_cpu():
    assert devices.device_name(torch.device("cpu")).startswith("CPU")
