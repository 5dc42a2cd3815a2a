"""The GPU figure a node's heartbeat carries, read through NVML (``pip install
'eventsched[gpu]'``, which brings nvidia-ml-py) on a machine with NVIDIA GPUs."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__all__ = ["gpu_load"]

_nvml: Any = None  # the pynvml module once initialised; False once it proved absent


def _initialised() -> Any:
    """pynvml, initialised once per process; None without it, a driver or a GPU."""
    global _nvml
    if _nvml is None:
        try:
            module = importlib.import_module("pynvml")
            module.nvmlInit()
            _nvml = module
        except Exception:  # ImportError, or NVMLError when there is no driver
            _nvml = False
    return _nvml or None


def gpu_load() -> int | None:
    """The busiest GPU's load in percent: its utilization or its memory in use,
    whichever is higher (both make it a poor place for one more job). None when this
    machine has no GPU NVML can see: the heartbeat says so, which is not 0 %."""
    nvml = _initialised()
    if nvml is None:
        return None
    busiest: int | None = None
    with contextlib.suppress(nvml.NVMLError):
        for index in range(nvml.nvmlDeviceGetCount()):
            device = nvml.nvmlDeviceGetHandleByIndex(index)
            utilization = int(nvml.nvmlDeviceGetUtilizationRates(device).gpu)
            memory = nvml.nvmlDeviceGetMemoryInfo(device)
            in_use = round(100 * memory.used / memory.total) if memory.total else 0
            busiest = max(busiest or 0, utilization, in_use)
    return None if busiest is None else min(100, busiest)
