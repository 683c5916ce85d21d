"""Property-based fuzzing of the patching entry points (`patch_positions`, `patch_heads` and their metrics), on the
workbench model and an HF model (SDPA) under the suite's contract: every case ends in an InterventionError or in
a result whose grid matches the layers and columns asked for, with finite values; and nothing stays hooked or
patched afterwards (`run_case` checks it)."""

from __future__ import annotations

from typing import Any

import hfzoo
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import workbench as wb
from workbench.errors import InterventionError
from workbench.interventions import logit_diff, patch_heads, patch_positions, target_logprob

from .conftest import FUZZ
from .entry_helpers import run_case

PATCH_FUZZ = FUZZ(40)
T, V, LAYERS, HEADS = 6, 64, 2, 4
CLEAN = torch.tensor([5, 6, 7, 8, 9, 10])


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(max_seq_len=32, vocab_size=V)).eval()
    return {"workbench": ours, "hf": hfzoo.build("llama")}


index = st.one_of(st.integers(-2, 3), st.integers(-9, 9))  # mostly in range (2 layers, 4 heads, 6 positions)
indices = st.one_of(st.none(), index, st.lists(index, min_size=1, max_size=3, unique=True), st.text(max_size=2),
                    st.booleans())
token = st.one_of(st.integers(0, V - 1), st.integers(-3, 200), st.text(max_size=1))


def _metric(draw: Any) -> Any:
    kind = draw(st.sampled_from(["diff", "diff", "logprob", "logprob", "vector", "scalar", "raises"]))
    if kind == "diff":
        return logit_diff(draw(token), draw(token), positions=draw(st.one_of(index, st.lists(index, max_size=2))))
    if kind == "logprob":
        return target_logprob(draw(token), positions=draw(index))
    if kind == "vector":  # one value per row and position: not one scalar per row
        return lambda logits: logits[..., 0]
    if kind == "scalar":  # one number for the whole batch
        return lambda logits: logits.sum()
    return lambda logits: 1 / 0


@PATCH_FUZZ
@given(kind=st.sampled_from(["workbench", "hf"]), sweep=st.sampled_from(["positions", "heads"]), data=st.data())
def test_fuzz_patching_sweeps(models, kind, sweep, data):
    model = models[kind]
    corrupted = CLEAN.clone()
    corrupted[: data.draw(st.integers(0, T))] = 3
    length = data.draw(st.sampled_from([T, T, T - 1]))  # a corrupted input of another length is refused
    site = data.draw(st.sampled_from(["resid", "resid", "attn", "mlp", "heads", "nope", ""]))
    layers = data.draw(indices)
    columns = data.draw(indices)
    batch = data.draw(st.booleans())

    def case() -> Any:
        metric = _metric(data.draw)
        with torch.no_grad():
            if sweep == "positions":
                return patch_positions(model, CLEAN, corrupted[:length], metric, site=site, layers=layers,
                                       positions=columns, batch=batch)
            return patch_heads(model, CLEAN, corrupted[:length], metric, layers=layers, heads=columns, batch=batch)

    outcome, out = run_case(case, model)
    event(outcome)  # the share of accepted cases shows with --hypothesis-show-statistics
    if outcome != "ok":
        assert isinstance(out, InterventionError), out
        return
    assert length == T
    wanted_rows = [layers] if isinstance(layers, int) else layers or list(range(LAYERS))
    n_columns = T if sweep == "positions" else HEADS
    wanted_cols = [columns] if isinstance(columns, int) else columns or list(range(n_columns))
    assert all(-LAYERS <= i < LAYERS for i in wanted_rows) and all(-n_columns <= j < n_columns for j in wanted_cols)
    assert len(out.values) == len(out.layers) == len(wanted_rows)
    assert all(len(row) == len(out.columns) == len(wanted_cols) for row in out.values)
    assert all(v == v and abs(v) != float("inf") for row in out.values for v in row)
