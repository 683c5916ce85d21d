"""Patching across implementations (`compare(..., patching=True)`): each aligned point's reference activation put
into the candidate, and the share of the final logit gap it closes.

The proof: on hand-written ports with one mistake planted in one block, the first point whose patch closes 99% of
the gap is the point `compare` names as the first divergence, for eight planted bugs across a Llama-style and a
GPT-2-style port; points before it close nothing, the block outputs after it close everything. Around it: a
clean port has no gap and runs nothing, a patch of the candidate's own activation changes nothing bitwise, the
patched logits and shares equal a computation by hand, and the view and the HTML export show the shares.
"""

from __future__ import annotations

import math

import hfzoo
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from families.familymodels import randomize
from ports import HandGPT2, HandLlama

import workbench as wb
from workbench.compare import compare
from workbench.compare.activations import CaseRun, default_cases, run_case, value_at
from workbench.compare.patching import CrossPatcher, PatchedPoint, PatchSweep, logit_gap, patch_sweep, to_layout
from workbench.compare.points import align, find_points
from workbench.compare.record import Call
from workbench.lm.adapter import ModelAdapter
from workbench.viz.compare import patching_figure, patching_html

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return randomize(hfzoo.build("llama"), (0.5, 1.5))


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    """GPT-2 with trained-like magnitudes in the MLP (HF's init keeps pre-activations near zero, where exact and
    tanh GELU agree to 1e-6)."""
    hf = randomize(hfzoo.build("gpt2"), (0.5, 1.5))
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.mul_(10)
    return hf


# --- mistakes planted in one block of a correct port ----------------------------------------------------------
def llama_gelu(port: HandLlama, k: int) -> None:
    port.layers[k].mlp.act = lambda x: F.gelu(x, approximate="tanh")


def llama_no_scale(port: HandLlama, k: int) -> None:
    port.layers[k].attn.bug = "no_scale"  # scores not divided by sqrt(D)


def llama_eps(port: HandLlama, k: int) -> None:
    port.layers[k].attn_norm.eps = 1e-5  # the reference's is 1e-6


def llama_gate_up_swapped(port: HandLlama, k: int) -> None:
    mlp = port.layers[k].mlp
    with torch.no_grad():
        gate = mlp.gate.weight.clone()
        mlp.gate.weight.copy_(mlp.up.weight)
        mlp.up.weight.copy_(gate)


def llama_embedding_scaled(port: HandLlama, k: int) -> None:
    with torch.no_grad():
        port.embed.weight.mul_(1.5)  # a converter that scaled the rows (the block index does not apply)


def gpt2_exact_gelu(port: HandGPT2, k: int) -> None:
    port.h[k].mlp.approximate = "none"


def gpt2_q_k_swapped(port: HandGPT2, k: int) -> None:
    """The fused q/k/v projection's q rows loaded where its k rows go and back."""
    qkv = port.h[k].attn.qkv
    C = qkv.weight.shape[1]
    with torch.no_grad():
        for t in (qkv.weight, qkv.bias):
            q = t[:C].clone()
            t[:C] = t[C:2 * C]
            t[C:2 * C] = q


def gpt2_eps(port: HandGPT2, k: int) -> None:
    port.h[k].ln_2.eps = 1e-2  # the reference's is 1e-5


PLANTED = [
    ("llama", llama_gelu, 0, "block 0 mlp"),
    ("llama", llama_gelu, 1, "block 1 mlp"),
    ("llama", llama_no_scale, 1, "block 1 attention"),
    ("llama", llama_eps, 0, "block 0 attention norm"),
    ("llama", llama_gate_up_swapped, 1, "block 1 mlp"),
    ("llama", llama_embedding_scaled, 0, "embedding"),
    ("gpt2", gpt2_exact_gelu, 1, "block 1 mlp"),
    ("gpt2", gpt2_q_k_swapped, 0, "block 0 attention"),
    ("gpt2", gpt2_eps, 0, "block 0 MLP norm"),
]


def planted(family: str, plant, k: int, request) -> tuple[torch.nn.Module, torch.nn.Module]:
    reference = request.getfixturevalue(family)
    port = (HandLlama if family == "llama" else HandGPT2)(reference)
    plant(port, k)
    return reference, port


@pytest.mark.parametrize("family, plant, k, point", PLANTED, ids=[f"{f}-{p.__name__}-{k}" for f, p, k, _ in PLANTED])
def test_the_first_point_that_closes_the_gap_is_the_first_divergence(family, plant, k, point, request):
    reference, port = planted(family, plant, k, request)
    c = compare(reference, port, patching=True, diagnose_cause=False)
    sweep = c.patching
    assert c.first_divergence is not None and c.first_divergence.label == point
    assert sweep is not None and sweep.has_gap and sweep.case == c.first_divergence.case == "batch"
    first = sweep.first_closing()
    assert first is not None and first.label == point
    labels = [p.label for p in sweep.points]
    assert labels == [r.label for r, _ in c.alignment.pairs]
    shares = {p.label: p.closed for p in sweep.points}
    before = labels[: labels.index(point)]
    assert all(abs(shares[b]) < 0.01 for b in before) and len(before) >= (point != "embedding")  # upstream: none
    after = [f"block {k} output", *(f"block {j} output" for j in range(k + 1, 2)), "final norm", "logits"]
    assert all(shares[a] >= 0.99 for a in after)  # on the residual path downstream of the bug: all of it
    assert shares["logits"] == 1.0
    assert f"{point} is the first point whose reference activation closes >= 99% of it" in c.summary()


def test_a_mistake_in_every_block_is_closed_only_on_the_last_blocks_residual_path(llama):
    """Patching one point repairs one path: with the wrong activation in both blocks, block 0's MLP output closes
    part of the gap, block 1's MLP output another part, and only block 1's output (the residual stream that carries
    both) closes it all; compare names the first occurrence."""
    c = compare(llama, HandLlama(llama, "gelu"), patching=True, diagnose_cause=False)
    shares = {p.label: p.closed for p in c.patching.points}
    assert c.first_divergence.label == "block 0 mlp"
    assert c.patching.first_closing().label == "block 1 output"
    assert 0.05 < shares["block 0 mlp"] < 0.95 and 0.05 < shares["block 1 mlp"] < 0.95


def test_a_mistake_seen_only_in_one_case_is_patched_in_that_case(llama):
    c = compare(llama, HandLlama(llama, "cache_positions"), patching=True, diagnose_cause=False)
    assert c.first_divergence.case == c.patching.case == "cached"
    assert c.patching.has_gap and c.patching.first_closing().label == "block 1 output"
    assert all(abs(p.closed) < 0.01 for p in c.patching.points[:2])  # embedding, first norm


def test_a_cache_less_candidate_is_patched_on_the_positions_it_recomputes(gpt2):
    """HF's GPT-2 feeds the cached case's last two tokens through its cache; the hand port has no cache and
    recomputes all eight, so the reference's (B, 2, C) activations go into its last two positions."""
    port = HandGPT2(gpt2)
    gpt2_exact_gelu(port, 1)
    case = default_cases(ModelAdapter(gpt2).vocab_size)[2]
    point = find_points(ModelAdapter(port))[1]
    calls, _ = run_case(ModelAdapter(port), [point], case)
    assert case.prefix == 6 and calls[point.module_name].output.shape[1] == 8  # the whole sequence, recomputed
    c = compare(gpt2, port, patching=True, diagnose_cause=False, cases=("cached",))
    assert c.first_divergence.label == c.patching.first_closing().label == "block 1 mlp"
    assert all(abs(p.closed) < 0.01 for p in c.patching.points[:6])


def test_activations_map_onto_the_candidates_layout_as_compare_lines_them_up():
    x = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert torch.equal(to_layout(x, torch.zeros(6, 4)), x.reshape(6, 4))  # flattened batch and positions (OPT)
    assert torch.equal(to_layout(x.reshape(6, 4), torch.zeros(2, 3, 4)), x)
    assert torch.equal(to_layout(x, torch.zeros(2, 2, 4)), x[:, 1:])  # the candidate computes fewer positions
    own = torch.full((2, 5, 4), -1.0, dtype=torch.float64)
    spliced = to_layout(x, own)  # a cache-less candidate recomputes the prefix: its own values kept there
    assert spliced.dtype == torch.float64 and torch.equal(spliced[:, :2], own[:, :2])
    assert torch.equal(spliced[:, 2:], x.double())
    assert to_layout(x, torch.zeros(2, 3, 5)) is None and to_layout(x, torch.zeros(3, 3, 4)) is None


def test_a_clean_port_has_no_gap_and_runs_nothing(llama, gpt2):
    for reference, port in ((llama, HandLlama(llama)), (gpt2, HandGPT2(gpt2))):
        c = compare(reference, port, patching=True)
        sweep = c.patching
        assert sweep is not None and not sweep.has_gap and sweep.points == () and sweep.first_closing() is None
        assert sweep.gap <= sweep.tolerance * sweep.scale and sweep.scale > 0
        assert c.summary().splitlines()[-1].startswith("patching: nothing to close: the logits agree within noise")
    same = compare(llama, llama, patching=True).patching
    assert same.gap == 0.0 and same.points == ()  # a zero gap: nothing divided


def test_the_default_compare_runs_no_patch_and_patching_leaves_nothing_behind(llama):
    port = HandLlama(llama)
    llama_no_scale(port, 0)
    forwards = []
    port.register_forward_pre_hook(lambda *_: forwards.append(1))
    plain = compare(llama, port, diagnose_cause=False)
    runs = len(forwards)
    assert plain.patching is None and "patching" not in plain.summary()
    patched = compare(llama, port, patching=True, diagnose_cause=False)
    assert len(forwards) - runs == runs + len(patched.alignment.pairs) - 1  # one forward per point but the logits
    port._forward_pre_hooks.clear()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in port.modules())
    fresh = HandLlama(llama)
    llama_no_scale(fresh, 0)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(port(ids), fresh(ids))


@pytest.mark.parametrize("which", ["hand llama", "hand gpt2", "hf llama"])
def test_patching_the_candidates_own_activation_changes_nothing(which, llama, gpt2):
    """Every point, in every case (plain, left-padded, a cached step): bitwise the logits of the unpatched run."""
    model = {"hand llama": lambda: HandLlama(llama), "hand gpt2": lambda: HandGPT2(gpt2), "hf llama": lambda: llama}
    adapter = ModelAdapter(model[which]())
    points = find_points(adapter)
    for case in default_cases(adapter.vocab_size):
        calls, logits = run_case(adapter, points, case)
        patcher = CrossPatcher(adapter, CaseRun(case, calls, calls, (logits, logits)))
        for point in points:
            patched, why = patcher.logits(point, value_at(point, calls, logits))
            assert why == "" and patched is not None
            assert torch.equal(patched, logits), (case.name, point.label)


def recorded(reference: torch.nn.Module, port: torch.nn.Module, case: int):
    """(alignment, candidate adapter, both models' run of default case `case`), as compare records them."""
    ref_a, cand_a = ModelAdapter(reference), ModelAdapter(port)
    ref_points, cand_points = find_points(ref_a), find_points(cand_a)
    chosen = default_cases(ref_a.vocab_size)[case]
    (ref_calls, ref_logits), (cand_calls, cand_logits) = (run_case(ref_a, ref_points, chosen),
                                                          run_case(cand_a, cand_points, chosen))
    return align(ref_points, cand_points), cand_a, CaseRun(chosen, ref_calls, cand_calls, (ref_logits, cand_logits))


def test_patched_logits_and_shares_equal_a_computation_by_hand(llama):
    port = HandLlama(llama)
    llama_eps(port, 1)
    alignment, cand_a, run = recorded(llama, port, 1)  # left-padded: the gap leaves the padding out
    sweep = patch_sweep(alignment, cand_a, run, 1e-5)
    (ref_logits, cand_logits), ref_calls = run.logits, run.reference

    keep = run.case.mask.bool()
    gap = float((cand_logits.double() - ref_logits.double())[keep].norm())
    assert logit_gap(cand_logits, ref_logits, keep) == sweep.gap == gap
    assert sweep.scale == float(ref_logits.double()[keep].norm())
    patcher = CrossPatcher(cand_a, run)
    pairs = {r.label: (r, c) for r, c in alignment.pairs}
    with torch.no_grad():
        by_hand = {
            "final norm": port.head(ref_calls["model.norm"].output),
            "block 1 output": port.head(port.norm(ref_calls["model.layers.1"].output)),
        }
    for label, expected in by_hand.items():
        ref, cand = pairs[label]
        patched, _ = patcher.logits(cand, value_at(ref, ref_calls, ref_logits))
        assert torch.equal(patched, expected), label
        share = next(p.closed for p in sweep.points if p.label == label)
        assert share == 1 - float((expected.double() - ref_logits.double())[keep].norm()) / gap


def test_a_point_whose_activation_does_not_map_is_reported_not_patched(llama):
    port = HandLlama(llama)
    llama_gelu(port, 0)
    alignment, cand_a, run = recorded(llama, port, 0)
    run.reference["model.layers.0.mlp"] = Call(None, torch.zeros(2, 8, 5))  # a width the candidate's MLP lacks
    sweep = patch_sweep(alignment, cand_a, run, 1e-5)
    mlp = next(p for p in sweep.points if p.label == "block 0 mlp")
    assert math.isnan(mlp.closed) and math.isnan(mlp.gap)
    assert mlp.note == "the reference's (2, 8, 5) does not map onto the candidate's output (2, 8, 32)"
    assert sweep.first_closing().label == "block 0 output"


def test_non_finite_candidate_logits_are_a_gap_without_shares(llama):
    alignment, cand_a, run = recorded(llama, HandLlama(llama), 0)
    broken = run.logits[1].clone()
    broken[0, 3, 7] = math.nan
    sweep = patch_sweep(alignment, cand_a, CaseRun(run.case, run.reference, run.candidate, (run.logits[0], broken)),
                        1e-5)
    assert math.isnan(sweep.gap) and sweep.has_gap and sweep.points == ()
    assert sweep.summary().endswith("the candidate's logits are not finite (or not shaped as the reference's): no "
                                    "share of an unbounded gap can be measured")


# --- the view and the export ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patched(llama) -> wb.Comparison:
    port = HandLlama(llama)
    llama_no_scale(port, 1)
    return compare(llama, port, patching=True)


def test_compare_view_has_a_patching_tab_with_the_shares(patched, tmp_path):
    view = wb.CompareView(patched)
    titles = [view.tabs.get_title(i) for i in range(len(view.tabs.children))]
    assert titles == ["diagnosis", "weights", "patching"]
    tab = view.tabs.children[2]
    assert view.patching_figure in tab.children and view.patching in tab.children
    sweep = patched.patching
    bars = view.patching_figure.data[0]
    assert list(bars.x) == [p.label for p in sweep.points]
    np.testing.assert_array_equal(np.asarray(bars.y, dtype=float), [p.closed for p in sweep.points])
    mark = view.patching_figure.data[1]
    assert mark.name == "first divergence" and list(mark.x) == ["block 1 attention"]
    assert mark.y[0] == next(p.closed for p in sweep.points if p.label == "block 1 attention") >= 0.99
    table = view.patching.value
    assert "block 1 attention is the first point whose reference activation closes &gt;= 99% of it" in table
    noise = sweep.tolerance * sweep.scale
    for p in sweep.points:
        gap = f"&lt; {noise:.0e}" if p.gap <= noise else f"{p.gap:.1e}"
        assert f"<td>{p.label}</td><td>{p.module}</td><td>{gap}</td>" in table
        assert f"{round(p.closed, 3) + 0.0:.1%}</td>" in table
    assert "100.0%</td>" in table and "-0.0%" not in table
    page = view.save_html(tmp_path / "view.html").read_text()
    assert "block 1 attention is the first point" in page and page.count("js-plotly-plot") + page.count(
        "plotly-graph-div") >= 2


def test_compare_view_without_patching_says_how_to_get_it(llama):
    view = wb.CompareView(compare(llama, HandLlama(llama, "eps"), diagnose_cause=False))
    assert view.patching_figure is None
    assert "patching=True" in view.patching.value and view.tabs.get_title(2) == "patching"
    clean = wb.CompareView(compare(llama, HandLlama(llama), patching=True))
    assert clean.patching_figure is None and "nothing to close" in clean.patching.value


def test_html_export_holds_the_patching_section(patched, llama, tmp_path):
    page = patched.save_html(tmp_path / "cmp.html").read_text()
    assert "Patching the reference into the candidate" in page and "share of the gap closed" in page
    for p in patched.patching.points:
        assert f"<td>{p.label}</td><td>{p.module}</td>" in page
    block = patched._repr_html_()
    assert "Patching the reference into the candidate" in block and "block 1 attention is the first point" in block
    plain = compare(llama, HandLlama(llama, "eps"), diagnose_cause=False)
    assert "Patching the reference" not in plain.save_html(tmp_path / "plain.html").read_text()
    assert len(patching_figure(plain).data) == 0


def test_the_summary_names_the_point_that_closes_the_most_when_none_closes_it_all():
    points = tuple(PatchedPoint(f"p{i}", i, f"m{i}", g, 1 - g / 2, "") for i, g in enumerate((2.0, 1.0, 1.5)))
    sweep = PatchSweep("padded", 2.0, 10.0, 1e-5, points)
    assert sweep.first_closing() is None
    assert sweep.summary() == ("patching (padded inputs, logit gap 2.0e+00 L2 over real tokens): no single point "
                               "closes 99% of it (the most, 50%, at p1)")


def test_patching_html_escapes_what_the_models_name():
    hostile = PatchedPoint("<script>1</script>", 1.0, "<b>mlp</b>", 0.5, 0.5, "<i>why</i>")
    sweep = PatchSweep("batch", 1.0, 10.0, 1e-5, (hostile,))
    table = str(patching_html(sweep))
    assert "<script>" not in table and "<b>mlp" not in table and "<i>why" not in table
    assert "&lt;script&gt;1&lt;/script&gt;" in table and "&lt;b&gt;mlp&lt;/b&gt;" in table and "50.0%" in table
