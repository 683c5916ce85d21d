"""Patching sweeps: every cell equals the single patched run written by hand with plain torch hooks (bitwise
for one forward per cell, to float noise for batched, resumed runs), on the workbench model, six HF families
and a hand-written GPT; a clean activation patched into the clean run changes nothing; and models that
cannot take a batch fall back to one run per cell."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

import workbench as wb
from tests import hfzoo
from tests.bugzoo.minigpt import MiniConfig, MiniGPT
from workbench.interventions import patching
from workbench.interventions.metrics import logit_diff
from workbench.interventions.patching import patch_heads, patch_positions, patched_logits, split_by_position
from workbench.lm.adapter import ModelAdapter, extract_logits

CLEAN = torch.tensor([5, 9, 3, 7, 11, 2, 40, 41])
CORRUPTED = torch.tensor([5, 9, 30, 7, 11, 2, 44, 41])
METRIC = logit_diff(12, 13)
SUBMODULE = {"resid": "", "attn": None, "mlp": None}


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return wb.TransformerLM(wb.ModelConfig.preset("tiny").replace(init_std=0.3)).eval()


def mini() -> nn.Module:
    torch.manual_seed(0)
    return MiniGPT(MiniConfig(dropout=0.0, init_std=0.3)).eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "workbench": tiny, "handwritten": mini,
    **{f: (lambda f=f: hfzoo.build(f)) for f in ("gpt2", "llama", "mistral", "gpt_neox", "mixtral", "bloom")},
}
SITES = {  # the module patched in block 0 by each site, relative to the block (the same in every block)
    "workbench": {"attn": "attn", "mlp": "mlp", "heads": "attn.out"},
    "handwritten": {"attn": "attn", "mlp": "mlp", "heads": "attn.proj"},
    "gpt2": {"attn": "attn", "mlp": "mlp", "heads": "attn.c_proj"},
    "llama": {"attn": "self_attn", "mlp": "mlp", "heads": "self_attn.o_proj"},
    "mistral": {"attn": "self_attn", "mlp": "mlp", "heads": "self_attn.o_proj"},
    "gpt_neox": {"attn": "attention", "mlp": "mlp", "heads": "attention.dense"},
    "mixtral": {"attn": "self_attn", "mlp": "mlp", "heads": "self_attn.o_proj"},
    "bloom": {"attn": "self_attention", "mlp": "mlp", "heads": "self_attention.dense"},
}


@pytest.fixture
def small_batch_cost(monkeypatch):
    """Batches split as a long prompt's are (the default keeps a short prompt's layer one batch), so these short
    prompts run the cached continuation: its cells are checked as the full batches' are."""
    monkeypatch.setattr(patching, "BATCH_COST", 8)


def test_a_short_prompts_layer_is_one_batch_and_a_long_ones_is_split():
    assert split_by_position(list(range(14)), 14, 14, patching.BATCH_COST) == [(0, 14)]
    spans = split_by_position(list(range(64)), 64, 64, patching.BATCH_COST)
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == 64


@pytest.fixture(scope="module", params=list(MODELS))
def model(request) -> tuple[str, nn.Module]:
    return request.param, MODELS[request.param]()


def _first(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]  # type: ignore[index]


def _module(net: nn.Module, layer: int, rel: str) -> nn.Module:
    _, blocks = ModelAdapter(net).blocks()  # type: ignore[misc]
    block = blocks[layer][1]
    return block.get_submodule(rel) if rel else block


def by_hand(net: nn.Module, layer: int, column: int, rel: str, heads: int = 0) -> float:
    """METRIC of the corrupted run with one activation replaced, written with plain torch hooks: a module's
    output at one position, or (heads > 0) head `column` of the output projection's input at every position."""
    target = _module(net, layer, rel)
    kept: list[torch.Tensor] = []
    if heads:
        grab = target.register_forward_pre_hook(lambda _m, args: kept.append(args[0].detach().clone()))
    else:
        grab = target.register_forward_hook(lambda _m, _a, out: kept.append(_first(out).detach().clone()))
    with torch.no_grad():
        extract_logits(net(CLEAN[None]))
    grab.remove()
    clean = kept[0]

    def heads_in(_m: nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        D = x.shape[-1] // heads
        x[:, :, column * D:(column + 1) * D] = clean[:, :, column * D:(column + 1) * D]
        return (x, *args[1:])

    def position_out(_m: nn.Module, _a: tuple, out: object) -> object:
        x = _first(out).clone()
        x[:, column] = clean[:, column]
        return x if isinstance(out, torch.Tensor) else (x, *out[1:])  # type: ignore[index]

    handle = target.register_forward_pre_hook(heads_in) if heads else target.register_forward_hook(position_out)
    try:
        with torch.no_grad():
            return float(METRIC(extract_logits(net(CORRUPTED[None])))[0])
    finally:
        handle.remove()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


@pytest.mark.usefixtures("small_batch_cost")
@pytest.mark.parametrize("site", ["resid", "attn", "mlp"])
def test_every_position_cell_equals_the_patched_run_by_hand(model, site):
    name, net = model
    rel = "" if site == "resid" else SITES[name][site]
    swept = patch_positions(net, CLEAN, CORRUPTED, METRIC, site=site)
    single = patch_positions(net, CLEAN, CORRUPTED, METRIC, site=site, batch=False)
    assert swept.batched and not single.batched
    if name == "handwritten":  # its cache is its own tuples: every batch runs every position, and says so
        assert len(swept.notes) == 1 and "no KV cache to resume from" in swept.notes[0]
    else:
        assert swept.notes == []
    assert swept.layers == [0, 1] and swept.columns == list(range(len(CLEAN)))
    for i, layer in enumerate(swept.layers):
        for j, pos in enumerate(swept.columns):
            expected = by_hand(net, layer, pos, rel)
            assert single.values[i][j] == expected  # one plain forward per cell: bitwise
            assert _close(swept.values[i][j], expected), (layer, pos, swept.values[i][j], expected)
    # positions before the corruption see nothing of it: patching them changes nothing
    assert all(_close(swept.values[i][j], swept.corrupted) for i in range(2) for j in (0, 1))


def test_every_head_cell_equals_the_patched_run_by_hand(model):
    name, net = model
    swept = patch_heads(net, CLEAN, CORRUPTED, METRIC)
    single = patch_heads(net, CLEAN, CORRUPTED, METRIC, batch=False)
    assert swept.batched and swept.columns == [0, 1, 2, 3] and swept.column_labels == ["h0", "h1", "h2", "h3"]
    for i, layer in enumerate(swept.layers):
        for j, head in enumerate(swept.columns):
            expected = by_hand(net, layer, head, SITES[name]["heads"], heads=4)
            assert single.values[i][j] == expected
            assert _close(swept.values[i][j], expected), (layer, head)


def test_the_reference_metrics_and_scores(model):
    _, net = model
    result = patch_positions(net, CLEAN, CORRUPTED, METRIC, layers=[1], positions=[-1, 2])
    with torch.no_grad():
        clean = float(METRIC(extract_logits(net(CLEAN[None])))[0])
        corrupted = float(METRIC(extract_logits(net(CORRUPTED[None])))[0])
    assert (result.clean, result.corrupted) == (clean, corrupted)
    assert result.layers == [1] and result.columns == [7, 2]
    # the last block's whole output at the last position is the clean run's: its metric is restored exactly
    assert _close(result.values[0][0], clean) and _close(result.scores[0][0], 1.0)
    assert result.scores[0][1] == pytest.approx((result.values[0][1] - corrupted) / (clean - corrupted))


@pytest.mark.parametrize("site", ["resid", "attn", "mlp", "heads"])
def test_patching_the_clean_runs_own_activation_into_it_changes_nothing(model, site):
    _, net = model
    with torch.no_grad():
        plain = extract_logits(net(CLEAN[None]))
    for layer, column in ((0, 3), (1, 0)):
        assert torch.equal(patched_logits(net, CLEAN, CLEAN, layer, column, site=site), plain)
    swept = patch_positions(net, CLEAN, CLEAN, METRIC, batch=False) if site != "heads" else \
        patch_heads(net, CLEAN, CLEAN, METRIC, batch=False)
    assert all(v == swept.clean for row in swept.values for v in row)


def test_batches_are_split_by_the_memory_budget_and_give_the_same_cells():
    net = tiny()
    whole = patch_positions(net, CLEAN, CORRUPTED, METRIC)
    split = patch_positions(net, CLEAN, CORRUPTED, METRIC, memory_budget=1)  # one row per batch
    plain = patch_positions(net, CLEAN, CORRUPTED, METRIC, resume=False)  # batched, every block run
    for a, b, c in zip(whole.values, split.values, plain.values):
        assert all(_close(x, y) and _close(x, z) for x, y, z in zip(a, b, c))


class OneRowGPT(MiniGPT):
    """A hand-written model that refuses batches of more than one row."""

    def forward(self, input_ids, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if input_ids.shape[0] > 1:
            raise RuntimeError("this model takes one sequence at a time")
        return super().forward(input_ids, **kwargs)


class BatchMeanNorm(nn.LayerNorm):
    """A final norm that gives every row the batch's mean: exactly itself for one row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y + (y.mean(dim=0, keepdim=True) - y)


class MixingGPT(MiniGPT):
    """A model whose rows influence each other (a batch statistic), so a batched cell is not the cell alone."""

    def __init__(self, cfg: MiniConfig) -> None:
        super().__init__(cfg)
        self.ln_f = BatchMeanNorm(cfg.d_model)


@pytest.mark.parametrize("cls", [OneRowGPT, MixingGPT])
def test_a_model_that_cannot_take_a_batch_is_swept_one_run_per_cell(cls, caplog):
    torch.manual_seed(0)
    net = cls(MiniConfig(dropout=0.0, init_std=0.3)).eval()
    with caplog.at_level(logging.WARNING, logger="workbench.interventions.patching"):
        result = patch_positions(net, CLEAN, CORRUPTED, METRIC)
    assert not result.batched and "one forward per cell" in result.notes[0]
    assert "one forward per cell" in caplog.text
    for i, layer in enumerate(result.layers):
        for j, pos in enumerate(result.columns):
            assert result.values[i][j] == by_hand(net, layer, pos, "")


def test_the_output_head_runs_only_where_a_declared_metric_reads():
    net = tiny()
    seen: list[tuple[int, ...]] = []
    # a forward hook sees the arguments the forward ran with, after the sweep's own pre-hook
    handle = net.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    T, C = len(CLEAN), net.config.d_model
    try:
        declared = patch_positions(net, CLEAN, CORRUPTED, logit_diff(12, 13, positions=[2, -1]))
        batches = [s for s in seen if s != (1, T, C)]  # (1, T, C): the runs alone that check the batches
        assert batches and all(s[1] <= 2 for s in batches)  # the head on the 2 positions (those after a start)
        assert any(s[0] > 1 and s[1] == 2 for s in batches)
        seen.clear()
        undeclared = patch_positions(net, CLEAN, CORRUPTED, lambda x: logit_diff(12, 13, positions=[2, -1])(x))
        assert any(s[0] > 1 and s[1] == T for s in seen)  # a batch from position 0: every position
    finally:
        handle.remove()
    assert declared.values == undeclared.values


@pytest.mark.usefixtures("small_batch_cost")
@pytest.mark.parametrize("name", ["workbench", "llama", "mistral"])
def test_batches_after_position_0_run_only_their_positions_on_the_corrupted_runs_cache(name):
    net = MODELS[name]()
    _, blocks = ModelAdapter(net).blocks()  # type: ignore[misc]
    seen: list[tuple[int, int]] = []  # (rows, positions) the last block ran
    handle = blocks[-1][1].register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        tuple((args[0] if args else kwargs["hidden_states"]).shape[:2])), with_kwargs=True)
    T = len(CLEAN)
    try:
        swept = patch_positions(net, CLEAN, CORRUPTED, METRIC, layers=[0])
    finally:
        handle.remove()
    starts = sorted({T - t for rows, t in seen if rows > 1})
    assert starts[0] == 0 and len(starts) > 1  # split by position: later batches start after position 0
    assert sum(rows * t for rows, t in seen if rows > 1) < T * T  # fewer row-positions than every one
    for j, pos in enumerate(swept.columns):
        assert _close(swept.values[0][j], by_hand(net, 0, pos, ""))


def test_the_split_by_position_is_the_cheapest():
    import itertools

    for columns, T, most in (([0, 1, 2, 3, 4, 5, 6, 7], 8, 8), ([0, 2, 3, 9, 10, 13], 14, 3), ([5], 6, 4)):
        spans = split_by_position(columns, T, most, batch_cost=4)
        assert spans[0][0] == 0 and spans[-1][1] == len(columns)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and all(0 < hi - lo <= most for lo, hi in spans)

        def cost(cuts: tuple[int, ...], columns: list[int] = columns, T: int = T) -> float:
            bounds = [0, *cuts, len(columns)]
            return sum(4 + (hi - lo) * (T - columns[lo]) for lo, hi in zip(bounds, bounds[1:]))

        best = min(cost(c) for k in range(len(columns)) for c in itertools.combinations(range(1, len(columns)), k)
                   if all(hi - lo <= most for lo, hi in zip([0, *c], [*c, len(columns)])))
        assert cost(tuple(lo for lo, _ in spans[1:])) == best


@pytest.mark.usefixtures("small_batch_cost")
def test_a_cache_that_cannot_fork_is_noted_and_the_batches_run_every_position(monkeypatch):
    from workbench.lm.prefix import NoPrefixCache, PromptCache

    def refuse(self, length, rows):  # noqa: ANN001, ANN202
        raise NoPrefixCache("a cache that cannot be cut")

    monkeypatch.setattr(PromptCache, "fork", refuse)
    net = tiny()
    result = patch_positions(net, CLEAN, CORRUPTED, METRIC)
    assert result.batched and len(result.notes) == 1 and "a cache that cannot be cut" in result.notes[0]
    for i, layer in enumerate(result.layers):
        for j, pos in enumerate(result.columns):
            assert _close(result.values[i][j], by_hand(net, layer, pos, ""))
