"""Patching sweeps: every cell equals the single patched run written by hand with plain torch hooks (bitwise
for one forward per cell, to float noise for batched runs whose blocks run only the rows a patch has reached),
on the workbench model, six HF families and a hand-written GPT; the cells the prompts share are not run; the
batch plan is the cheapest; a clean activation patched into the clean run changes nothing; and models that
cannot take a batch, or blocks that cannot run part of one, fall back."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

import workbench as wb
from tests import hfzoo
from tests.bugzoo.minigpt import MiniConfig, MiniGPT
from workbench.interventions import batches, patching
from workbench.interventions.batches import Cell
from workbench.interventions.metrics import logit_diff
from workbench.interventions.patching import patch_heads, patch_positions, patched_logits
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
    """Batches split by position as a long prompt's are (a short prompt's cells at the default costs are one
    batch from position 0), so these short prompts run the cached continuation: its cells are checked as the
    full batches' are."""
    monkeypatch.setattr(batches, "BATCH_COST", 8)
    monkeypatch.setattr(batches, "CALL_COST", 0)


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
    # 2 x 4 cells are as many rows as positions, so every row ran every block; 2 x 3 rows are cut (block 0 runs
    # the 3 patched there) where the model allows it
    seen, three = _rows_per_block(net, name, patch_heads, heads=[0, 1, 2])
    if name != "handwritten":  # its blocks are not known to keep the batch first: every row runs
        assert seen == ([{3}, {6}] if name != "bloom" else [{3, 6}, {6}])  # bloom: cut, failed, run again
    assert all(_close(three.values[i][j], swept.values[i][j]) for i in range(2) for j in range(3))


def test_the_reference_metrics_and_scores(model):
    _, net = model
    result = patch_positions(net, CLEAN, CORRUPTED, METRIC, layers=[1], positions=[-1, 2])
    with torch.no_grad():
        clean = float(METRIC(extract_logits(net(CLEAN[None])))[0])
        corrupted = float(METRIC(extract_logits(net(CORRUPTED[None])))[0])
    assert (result.clean, result.corrupted) == (clean, corrupted)
    assert result.layers == [1] and result.columns == [7, 2]
    # the last block's whole output at the last position is the clean run's: its metric is restored (to the
    # float noise of a batch; a tiny random model's clean - corrupted can be as small, so scores are not compared
    # with 1 but with their definition)
    assert _close(result.values[0][0], clean)
    for j in range(2):
        assert result.scores[0][j] == pytest.approx((result.values[0][j] - corrupted) / (clean - corrupted))


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
    assert not result.batched and "one forward per cell" in result.notes[-1]
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
        runs = [s for s in seen if s != (1, T, C)]  # (1, T, C): the runs alone that check the batches
        assert runs and all(s[1] <= 2 for s in runs)  # the head on the 2 positions (those after a start)
        assert any(s[0] > 1 and s[1] == 2 for s in runs)
        seen.clear()
        undeclared = patch_positions(net, CLEAN, CORRUPTED, lambda x: logit_diff(12, 13, positions=[2, -1])(x))
        assert any(s[0] > 1 and s[1] > 2 for s in seen)  # every position a batch runs
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
    # positions 0 and 1 are the same in both prompts: their cells do not run; split by position, later batches
    # start after the first
    assert starts[0] == 2 and len(starts) > 1
    assert sum(rows * t for rows, t in seen if rows > 1) < T * T  # fewer row-positions than every one
    for j, pos in enumerate(swept.columns):
        assert _close(swept.values[0][j], by_hand(net, 0, pos, ""))


def test_a_batch_costs_a_call_per_block_that_runs_and_its_rows_positions():
    # rows patched at blocks 0, 0, 1, 2 of 3, 5 positions each; the residual stream after block l (inclusive
    # False) differs from block l + 1 on: blocks 1 and 2 run 2 and 3 rows, block 0 none
    assert batches.batch_cost([0, 0, 1, 2], 5, 3, inclusive=False) == 64 + (32 + 2 * 5) + (32 + 3 * 5)
    # patched inside block l (an attention output): blocks 0, 1, 2 run 2, 3 and 4 rows
    assert batches.batch_cost([0, 0, 1, 2], 5, 3, inclusive=True) == 64 + (32 + 10) + (32 + 15) + (32 + 20)


def _groupings(positions: list[int]):  # every split of sorted positions into runs of consecutive ones
    for k in range(len(positions)):
        for cuts in itertools.combinations(range(1, len(positions)), k):
            bounds = [0, *cuts, len(positions)]
            yield [positions[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


@pytest.mark.parametrize(("layers", "positions", "T", "most", "inclusive"), [
    (range(30), range(14), 14, 420, False),  # SmolLM2's sweep: 30 blocks x 14 positions
    (range(4), range(8), 8, 5, True),  # fewer rows per batch than a position's cells
    (range(6), [0, 2, 3, 9, 10, 13], 14, 12, False),
    ([1, 3], range(64), 64, 64, False),
])
def test_the_batches_by_position_are_the_cheapest_and_hold_every_cell_once(layers, positions, T, most, inclusive):
    blocks = max(layers) + 1
    cells = [Cell(i, p) for i in layers for p in positions]
    plan = batches.by_position(cells, T, blocks, inclusive, most)
    got = [c for _, chunk in plan for c in chunk]
    assert sorted(got, key=lambda c: (c.layer, c.column)) == sorted(cells, key=lambda c: (c.layer, c.column))
    assert len(got) == len(cells)
    for start, chunk in plan:
        assert 0 < len(chunk) <= most and start == min(c.column for c in chunk)
        assert chunk == sorted(chunk, key=lambda c: (c.layer, c.column))  # rows by layer, as the wave needs

    @functools.cache
    def cost(group: tuple[int, ...]) -> int:  # a group of positions: its cells in the fewest near-equal batches
        members = sorted((c for c in cells if c.column in group), key=lambda c: (c.layer, c.column))
        pieces = -(-len(members) // most)
        cuts = [len(members) * k // pieces for k in range(pieces + 1)]
        return sum(batches.batch_cost([c.layer for c in members[lo:hi]], T - group[0], blocks, inclusive)
                   for lo, hi in zip(cuts, cuts[1:]))

    ordered = sorted(set(positions))
    if len(ordered) <= 14:  # every grouping of the positions into runs, those of one position whatever its size
        fits = [g for g in _groupings(ordered)
                if all(len(run) == 1 or sum(c.column in run for c in cells) <= most for run in g)]
        planned = sum(cost(tuple(sorted({c.column for c in chunk}))) for _, chunk in _merge(plan))
        assert planned == min(sum(cost(tuple(run)) for run in g) for g in fits)
    if len(layers) == 30:  # a short prompt: far fewer model calls than positions, and never a call per cell
        assert 1 < len(plan) < len(ordered)


def test_batches_from_position_0_are_as_few_as_fit_in_layer_order():
    cells = [Cell(i, h) for h in (2, 0, 1) for i in (3, 0, 2, 1)]  # 12 cells, out of order
    plan = batches.by_rows(cells, most=5)
    assert [len(chunk) for _, chunk in plan] == [4, 4, 4] and all(start == 0 for start, _ in plan)
    assert [c for _, chunk in plan for c in chunk] == sorted(cells, key=lambda c: (c.layer, c.column))
    assert batches.by_rows(cells, most=12) == [(0, sorted(cells, key=lambda c: (c.layer, c.column)))]
    # one layer per batch where every row runs from the batch's first patched block on
    assert [sorted({c.layer for c in chunk}) for _, chunk in batches.by_layer(cells, most=12)] == [[0], [1], [2], [3]]


def _merge(plan: list[tuple[int, list[Cell]]]) -> list[tuple[int, list[Cell]]]:
    """The plan's batches of one group of positions (split only to fit `most`) as one."""
    out: list[tuple[int, list[Cell]]] = []
    for start, chunk in plan:
        if out and out[-1][0] == start:
            out[-1][1].extend(chunk)
        else:
            out.append((start, list(chunk)))
    return out


@pytest.mark.usefixtures("small_batch_cost")
def test_a_cache_that_cannot_fork_is_noted_and_the_batches_run_every_position(monkeypatch):
    from workbench.lm.prefix import NoPrefixCache, PromptCache

    def refuse(self, length, rows, layer_rows=None):  # noqa: ANN001, ANN202
        raise NoPrefixCache("a cache that cannot be cut")

    monkeypatch.setattr(PromptCache, "fork", refuse)
    net = tiny()
    result = patch_positions(net, CLEAN, CORRUPTED, METRIC)
    assert result.batched and len(result.notes) == 1 and "a cache that cannot be cut" in result.notes[0]
    for i, layer in enumerate(result.layers):
        for j, pos in enumerate(result.columns):
            assert _close(result.values[i][j], by_hand(net, layer, pos, ""))


def _rows_per_block(net: nn.Module, name: str, sweep: Callable = patch_positions, **kwargs: object
                    ) -> tuple[list[set[int]], patching.PatchingResult]:
    """The batch row counts (more than one row) each block ran in a sweep of `net`, and the sweep: those its
    attention saw (a hook on the block itself sees the whole batch, before the sweep cuts it)."""
    attention = [_module(net, j, SITES[name]["attn"]) for j in range(2)]
    seen: list[set[int]] = [set() for _ in attention]
    handles = [m.register_forward_pre_hook(lambda _m, args, kw, j=j: seen[j].add(
        (args[0] if args else kw["hidden_states"]).shape[0]), with_kwargs=True) for j, m in enumerate(attention)]
    try:
        result = sweep(net, CLEAN, CORRUPTED, METRIC, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return [{r for r in rows if r > 1} for rows in seen], result


@pytest.mark.parametrize("name", ["workbench", "llama", "gpt2", "gpt_neox", "mixtral"])
def test_each_block_runs_only_the_rows_a_patch_has_reached(name):
    net = MODELS[name]()
    # the prompts differ from position 2 on: the cells before it are the corrupted run itself and do not run;
    # 2 blocks x 6 positions in one batch sorted by layer: an attention output patched in block l changes block
    # l on, so block 0 runs the 6 rows patched there and block 1 all 12
    seen, result = _rows_per_block(net, name, site="attn")
    assert seen == [{6}, {12}]
    rel = SITES[name]["attn"]
    assert all(_close(result.values[i][p], by_hand(net, i, p, rel)) for i in range(2) for p in range(8))
    assert all(result.values[i][p] == result.corrupted for i in range(2) for p in (0, 1))
    # the residual stream after block l changes block l + 1 on: block 0 never runs a batch
    seen, _ = _rows_per_block(net, name, site="resid")
    assert seen == [set(), {6}]
    # 8 rows in a run of 8 positions: a tensor of 8 rows might be a position's, so every row runs
    seen, _ = _rows_per_block(net, name, site="attn", positions=[2, 3, 4, 5])
    assert seen == [{8}, {8}]
    seen, _ = _rows_per_block(net, name, site="attn", positions=[2, 3, 4, 5, 6])
    assert seen == [{5}, {10}]


def test_a_block_that_cannot_run_part_of_the_batch_runs_every_row(caplog):
    # BLOOM's ALiBi bias is (rows x heads, 1, S): no tensor of the batch's row count, so the cut block's bias
    # does not fit its rows and the batch fails; it runs again with every row, and so do the batches after it
    net = MODELS["bloom"]()
    with caplog.at_level(logging.INFO, logger="workbench.interventions.patching"):
        seen, result = _rows_per_block(net, "bloom", site="attn")
    assert caplog.text.count("every row runs from now on") == 1
    assert result.batched and result.notes == [] and 12 in seen[0]  # again: every row through block 0
    for i in range(2):
        for j in range(8):
            assert _close(result.values[i][j], by_hand(net, i, j, "self_attention"))
