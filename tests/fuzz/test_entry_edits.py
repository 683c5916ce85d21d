"""Property-based fuzzing of the edit entry points (`workbench.edit` and its specs), on the workbench model and
an HF model (SDPA) under the suite's contract: every case ends in an InterventionError or in logits of the right
shape, an accepted case's indices were in range, and nothing stays hooked or patched afterwards."""

from __future__ import annotations

from typing import Any

import hfzoo
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import workbench as wb
from workbench.errors import InterventionError
from workbench.lm.edits import active_edits

from .conftest import FUZZ
from .entry_helpers import run_case

EDIT_FUZZ = FUZZ(60)
B, T, V = 2, 6, 64
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
MODULES = {"workbench": ["blocks.0", "blocks.1.mlp", "blocks.0.attn", "block.0", "lm_head", ""],
           "hf": ["model.layers.0", "model.layers.1.mlp", "model.norm", "model.layer.0", "lm_head", ""]}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=32, vocab_size=V)).eval()
    return {"workbench": ours, "hf": hfzoo.build("llama")}


index = st.integers(-9, 9)
indices = st.one_of(st.none(), index, st.lists(index, max_size=3), st.text(max_size=2), st.booleans())
values = st.sampled_from([(), (1,), (64,), (32,), (8,), (T, 64), (B, T, 32), (3, 1, 1)])


def _spec(draw: Any, kind: str) -> Any:
    which = draw(st.sampled_from(["Zero", "Scale", "Add", "Replace", "Apply", "ZeroHead", "ReplaceHead", "Knockout"]))
    where = dict(positions=draw(indices), rows=draw(indices))
    module = draw(st.sampled_from(MODULES[kind]))
    if which in ("Zero", "Scale", "Add", "Replace", "Apply"):
        factor = draw(st.one_of(st.floats(-2, 2), st.text(max_size=1)))
        extra: dict[str, Any] = {"Zero": {}, "Scale": {"factor": factor},
                                 "Add": {"value": torch.ones(draw(values))},
                                 "Replace": {"value": torch.ones(draw(values))},
                                 "Apply": {"fn": draw(st.sampled_from([torch.tanh, lambda x: x[..., :1], str]))}}[which]
        return getattr(wb, which)(module, **extra, **where)
    layer, head = draw(index), draw(index)
    if which == "ZeroHead":
        return wb.ZeroHead(layer, head, **where)
    if which == "ReplaceHead":
        return wb.ReplaceHead(layer, head, torch.ones(draw(values)), **where)
    return wb.Knockout(layer, keys=draw(indices), queries=draw(indices), heads=draw(indices), rows=where["rows"],
                       on=draw(st.sampled_from(["probs", "scores", "logits"])))


@st.composite
def edits(draw: Any, kind: str) -> list[Any]:
    specs = []
    for _ in range(draw(st.integers(1, 3))):
        try:
            specs.append(_spec(draw, kind))
        except InterventionError as err:  # a spec refused at construction names the fix
            assert str(err).strip()
    return specs


@EDIT_FUZZ
@given(kind=st.sampled_from(["workbench", "hf"]), data=st.data())
def test_fuzz_edit_specs(models, kind, data):
    model = models[kind]
    specs = data.draw(edits(kind))

    def case() -> torch.Tensor:
        with torch.no_grad(), wb.edit(model, *specs):
            out = model(IDS)
        return out if isinstance(out, torch.Tensor) else out.logits

    outcome, out = run_case(case, model)
    assert active_edits(model) == ()
    if outcome == "ok":
        assert out.shape == (B, T, V if kind == "workbench" else hfzoo.VOCAB)
        bounds = {"positions": T, "rows": B, "keys": T, "queries": T, "heads": 4}  # 4 heads in both models
        for spec in specs:
            for name, n in bounds.items():
                got = getattr(spec, name, None)
                items = [got] if isinstance(got, int) else got or []
                assert all(-n <= i < n for i in items), (spec.label, name)
            if isinstance(spec, (wb.ZeroHead, wb.ReplaceHead, wb.Knockout)):
                assert 0 <= spec.layer < 2
    else:
        assert isinstance(out, InterventionError), out
