"""The cached module tree of a traced model follows every change that its records depend on."""

import gc
import weakref

import torch
from torch import nn

import workbench as wb
from workbench.capture.layout import model_layout


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_layout_is_reused_until_the_tree_or_a_parameter_changes():
    net = _net()
    first = model_layout(net)
    assert model_layout(net) is first
    net.append(nn.Linear(2, 2))  # a module added
    second = model_layout(net)
    assert second is not first and len(second.named) == len(first.named) + 1
    net[0].weight = nn.Parameter(torch.zeros(8, 4))  # a parameter replaced
    third = model_layout(net)
    assert third is not second and any(p is net[0].weight for p in third.params)
    net[2].weight.requires_grad_(False)  # a parameter frozen
    assert model_layout(net) is not third
    net[2].weight.data = torch.zeros(3, 8)  # a parameter resized in place
    assert model_layout(net).info["2"][0] == 3 * 8 + 2


def test_records_follow_a_changed_model_between_traces():
    net = _net()
    x = torch.randn(3, 4)
    with wb.trace(net) as tr:
        net(x)
    net[2] = nn.Linear(8, 5)
    with wb.trace(net) as tr2:
        net(x)
    assert tr.find("2")[0].params == 8 * 2 + 2
    assert tr2.find("2")[0].params == 8 * 5 + 5
    assert tr2.meta["total_params"] == 4 * 8 + 8 + 8 * 5 + 5


def test_a_cached_layout_does_not_keep_its_model_alive():
    net = _net()
    with wb.trace(net):
        net(torch.randn(1, 4))
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None
