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
