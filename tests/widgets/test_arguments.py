"""Widget arguments of the wrong kind raise InputError/CaptureError that say what was expected (issue 17)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.capture.gradients import GradientHistory
from workbench.errors import CaptureError, InputError
from workbench.widgets import AttentionView, GenerationStepper, GradientFlow, LayerInspector, MemoryPanel
from workbench.widgets.dashboard import show


class Ids:
    """A tokenizer stub: three ids for any text."""

    def encode(self, text: str) -> list[int]:
        return [1, 2, 3]

    def decode(self, ids: list[int]) -> str:
        return "x"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tr: LayerInspector(42), "trace must be a Trace"),
        (lambda tr: LayerInspector(tr, max_rows=0), "max_rows must be an integer >= 1"),
        (lambda tr: AttentionView("attention"), "a Trace, a list of AttentionRecords or None"),
        (lambda tr: AttentionView([1, 2]), "a Trace, a list of AttentionRecords or None"),
        (lambda tr: AttentionView(tr, tokens="abc"), "tokens must be None or a list of strings"),
        (lambda tr: AttentionView(tr, metric="bogus"), "metric must be one of"),
        (lambda tr: AttentionView(tr, max_cells=0), "max_cells must be an integer >= 1"),
        (lambda tr: AttentionView(tr, head=-1), "head must be an integer >= 0"),
        (lambda tr: GradientFlow(42), "expected a GradientHistory or a Trace"),
        (lambda tr: GradientFlow(tr, min_interval="fast"), "min_interval must be a number of seconds"),
        (lambda tr: MemoryPanel(42), "source must be a Trace, a GenerationSession or None"),
        (lambda tr: MemoryPanel(tr, model="model"), "model must be an nn.Module or None"),
        (lambda tr: MemoryPanel(tr, optimizer=3), "optimizer must be a torch.optim.Optimizer or None"),
        (lambda tr: MemoryPanel(tr, cache=(1, 2)), "cache must be a KV cache"),
        (lambda tr: GenerationStepper("model", Ids(), "hi"), "model must be an nn.Module"),
        (lambda tr: GenerationStepper(nn.Linear(2, 2), object(), "hi"), "tokenizer with encode and decode"),
        (lambda tr: GenerationStepper(nn.Linear(2, 2), Ids(), 42), "prompt must be a string"),
        (lambda tr: GenerationStepper(nn.Linear(2, 2), Ids(), "hi", top_k=0), "top_k must be an integer >= 1"),
        (lambda tr: GenerationStepper(nn.Linear(2, 2), Ids(), "hi", {"do_sample": True}),
         "request must be a GenerationRequest or None"),
    ],
)
def test_widget_constructors_refuse_wrong_types(tiny_trace, make, message):
    with pytest.raises(InputError, match=message):
        make(tiny_trace)


def test_gradient_history_append_refuses_what_is_not_a_model_or_a_trace():
    history = GradientHistory()
    with pytest.raises(CaptureError, match="takes a model .* or a Trace taken with gradients=True, got str"):
        history.append("not a trace")
    with pytest.raises(CaptureError, match="step must be an integer"):
        history.append(nn.Linear(2, 2), step="1")
    assert history.steps == [] and history.norms == []  # nothing half-appended
    with pytest.raises(CaptureError, match="0 < vanishing < exploding"):
        GradientHistory(vanishing=1.0, exploding=0.5)
    with pytest.raises(CaptureError, match="max_steps must be None or an integer >= 1"):
        GradientHistory(max_steps=0)


def test_gradient_history_append_still_takes_a_trace(tiny_trace):
    history = GradientHistory()
    history.append(tiny_trace)
    assert history.steps == [0] and len(history.modules) > 0


@pytest.mark.parametrize("model", [nn.Identity(), nn.ReLU(), nn.Linear(3, 3)], ids=["identity", "relu", "linear"])
def test_show_on_a_module_that_is_not_a_language_model(model):
    with pytest.raises(InputError, match="show\\(\\) .*causal language model"):
        show(model, Ids(), "abc", generate=False)
    glob = nn.modules.module
    assert not glob._global_forward_hooks and not glob._global_forward_pre_hooks


def test_show_refuses_wrong_argument_types(tiny):
    with pytest.raises(InputError, match="text must be a string"):
        show(tiny, Ids(), 42)
    with pytest.raises(InputError, match="model must be an nn.Module"):
        show(lambda x: x, Ids(), "abc")


def test_the_stepper_says_in_a_notice_when_it_cannot_drive_a_model():
    view = GenerationStepper(nn.Linear(4, 4), Ids(), "abc")  # ids in, no logits out
    assert view.session is None
    text = " ".join(w.value for w in view.messages.children)
    assert "Cannot start generation for Linear" in text
    assert torch.is_grad_enabled()
