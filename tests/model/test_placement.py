"""`module_device` / `module_dtype`: one answer for every module, with or without parameters."""

from __future__ import annotations

import torch
from torch import nn

import workbench as wb
from workbench.lm import ModelAdapter
from workbench.model.placement import module_device, module_dtype


class BufferOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros(3, dtype=torch.long))  # not floating: no dtype answer
        self.register_buffer("scale", torch.ones(3, dtype=torch.float64))


def test_parameters_then_buffers_then_the_cpu_default():
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny")).to(torch.bfloat16)
    assert (module_device(model), module_dtype(model)) == (torch.device("cpu"), torch.bfloat16)
    assert (module_device(BufferOnly()), module_dtype(BufferOnly())) == (torch.device("cpu"), torch.float64)
    assert (module_device(nn.ReLU()), module_dtype(nn.ReLU())) == (torch.device("cpu"), torch.float32)
    cache = model.new_cache(2, 8)
    assert cache.keys[0].dtype == torch.bfloat16 and cache.device == torch.device("cpu")


def test_the_doctor_adapter_takes_a_module_without_parameters():
    adapter = ModelAdapter(nn.Identity())
    assert (adapter.device, adapter.dtype) == (torch.device("cpu"), torch.float32)


# --- resolve_device: one check of a device argument (issue 17) ----------------------------------------
def test_resolve_device_accepts_what_the_machine_has():
    from workbench.model.placement import resolve_device

    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")


def test_resolve_device_refuses_unknown_and_missing_devices():
    import pytest

    from workbench.model.placement import available_devices, resolve_device

    with pytest.raises(wb.InputError, match=r"device='bogus' is not a device name; use one of \['cpu'"):
        resolve_device("bogus")
    with pytest.raises(wb.InputError, match="must be a string such as 'cpu'"):
        resolve_device(3.5)  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(wb.InputError, match="this machine has no CUDA GPU"):
            resolve_device("cuda")
    else:
        with pytest.raises(wb.InputError, match="CUDA GPU\\(s\\)"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert "cpu" in available_devices()


def test_load_pretrained_checks_the_device_before_reading(tmp_path):
    import pytest

    missing = tmp_path / "nothing-here"
    with pytest.raises(wb.InputError, match="not a device name"):
        wb.load_pretrained(missing, device="bogus")  # the device is refused before the path is looked at
    with pytest.raises(wb.InputError, match="not a floating torch dtype"):
        wb.load_pretrained(missing, dtype="float16")
