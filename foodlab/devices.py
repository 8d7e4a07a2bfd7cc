"""Device choice and the few device-specific calls benchmarks and training need.

One place decides cuda > mps > cpu, which autocast dtype a device supports, how to
wait for queued work before reading a clock, and how to read peak memory.
"""
from __future__ import annotations

import logging
import os
import platform
import threading
import time
from functools import lru_cache

import psutil
import torch

from foodlab.errors import UsageError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda > mps > cpu; an explicit device that is missing is an error, not a fallback."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise UsageError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: this machine has no usable CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device auto or cpu")
    if kind == "mps" and not mps_available():
        raise UsageError("--device mps: Apple MPS is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A human name for reports: the GPU model, 'Apple MPS', or the CPU model and core count."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo().splitlines() if line.startswith("model name")),
               platform.processor() or platform.machine())
    return f"CPU {cpu} ({os.cpu_count()} cores)"


@lru_cache(maxsize=1)
def cpuinfo() -> str:
    """/proc/cpuinfo (Linux), or "" where there is none: the CPU's name and instruction-set flags."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (the first ``flags`` line of ``cpuinfo``)."""
    line = next((x for x in cpuinfo().splitlines() if x.startswith("flags")), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def default_amp(device: torch.device) -> bool:
    """Autocast on where the device runs reduced precision natively (CPU: only with bf16 instructions)."""
    device = resolve_device(device)
    if device.type != "cpu":
        return autocast_dtype(device) is not None
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision a device runs well, or None where autocast should stay off."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


def needs_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> bool:
    """fp16 on CUDA/MPS underflows gradients without loss scaling; bf16 does not."""
    return dtype == torch.float16 and resolve_device(device).type in ("cuda", "mps")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for the device, or a no-op context when dtype is None."""
    device = resolve_device(device)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a wall-clock reading covers the work, not its launch."""
    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def process_tree_rss() -> int:
    """Resident memory of this process plus its children (DataLoader workers), in bytes."""
    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakMemory:
    """Peak memory over a block of code, the way each device can report it.

    cuda: ``torch.cuda.max_memory_allocated`` (tensors only, exact).
    mps: driver-allocated memory, sampled. cpu: RSS of the process tree, sampled,
    so DataLoader workers count. ``peak_bytes`` is read after the block exits.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = resolve_device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> int:
        if self.device.type == "mps":
            return int(torch.mps.driver_allocated_memory())
        return process_tree_rss()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._read())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline_bytes = self._read()
            self.peak_bytes = self.baseline_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._read())

    @property
    def delta_bytes(self) -> int:
        """Peak above what was held when the block started: the block's own footprint."""
        return max(0, self.peak_bytes - self.baseline_bytes)
