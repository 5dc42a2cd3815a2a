"""The node SDK's GPU figure, with NVML replaced at its Python boundary (the pynvml
module): these machines have no GPU."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from eventsched.clients import gpu
from eventsched.clients.node import machine_load


class NVMLError(Exception):
    pass


@dataclass
class _Device:
    utilization: int
    used: int
    total: int


def _fake_nvml(devices: list[_Device], init_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")

    def init() -> None:
        if init_fails:
            raise NVMLError("Driver Not Loaded")

    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: devices[index]  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda device: types.SimpleNamespace(  # type: ignore[attr-defined]
        gpu=device.utilization
    )
    module.nvmlDeviceGetMemoryInfo = lambda device: types.SimpleNamespace(  # type: ignore[attr-defined]
        used=device.used, total=device.total
    )
    return module


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    gpu._nvml = None  # each test starts before NVML was first asked
    yield
    gpu._nvml = None


def test_the_busiest_gpu_by_utilization_or_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [_Device(30, 50, 100), _Device(70, 20, 100)]
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(devices))
    assert gpu.gpu_load() == 70
    devices[0].used = 90  # memory nearly full on the first: that one is the busiest now
    assert gpu.gpu_load() == 90
    assert machine_load()[1] == 90


def test_no_gpu_is_not_zero_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: import fails
    assert gpu.gpu_load() is None
    gpu._nvml = None
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([], init_fails=True))  # no driver
    assert gpu.gpu_load() is None
    gpu._nvml = None
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([]))  # a driver, no device
    assert gpu.gpu_load() is None
    assert machine_load()[1] is None
