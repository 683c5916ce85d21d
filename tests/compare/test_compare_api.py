"""`compare` around the proof suite: alignment, bad inputs, hooks and weights left as found, the summary, the
figure, the widget, the HTML export and the CLI's exit codes."""

from __future__ import annotations

import copy
import math

import hfzoo
import pytest
import torch
from ports import HandLlama

import workbench as wb
from workbench.cli import main
from workbench.compare import compare
from workbench.compare.points import align, find_points
from workbench.lm.adapter import ModelAdapter

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    hf = hfzoo.build("llama")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf


@pytest.fixture(scope="module")
def tiny() -> wb.TransformerLM:
    return wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()


def test_points_pair_by_role_across_naming_schemes(llama):
    ref, cand = find_points(ModelAdapter(llama)), find_points(ModelAdapter(HandLlama(llama)))
    pairs = align(ref, cand).pairs
    names = {r.label: (r.module_name, c.module_name) for r, c in pairs}
    assert names["block 1 attention"] == ("model.layers.1.self_attn", "layers.1.attn")
    assert names["block 0 MLP norm"] == ("model.layers.0.post_attention_layernorm", "layers.0.mlp_norm")
    assert names["final norm"] == ("model.norm", "norm")
    assert names["embedding"] == ("model.layers.0", "layers.0")  # what enters the first block
    assert [r.label for r, _ in pairs][-2:] == ["final norm", "logits"]


def test_a_shallower_candidate_reports_the_points_it_lacks(llama):
    short = HandLlama(llama)
    short.layers = short.layers[:1]
    c = compare(llama, short, diagnose_cause=False)
    assert {p.split(" (")[0] for p in c.alignment.unpaired_reference} == {
        "block 1 attention norm", "block 1 attention", "block 1 MLP norm", "block 1 mlp", "block 1 output"}
    assert c.alignment.unpaired_candidate == ()
    assert c.weights.unmatched_reference and not c.equivalent
    assert c.first_divergence.label == "final norm"  # the last paired block agrees; what follows it does not


def test_bad_inputs_raise_compare_errors(llama, tiny):
    with pytest.raises(wb.CompareError, match="same vocabulary"):
        compare(llama, tiny)
    with pytest.raises(wb.CompareError, match=r"\(B, T\) with B >= 1 and T >= 3"):
        compare(llama, llama, torch.tensor([1, 2, 3]))
    with pytest.raises(wb.CompareError, match="outside the vocabulary"):
        compare(llama, llama, torch.full((1, 4), 500))
    with pytest.raises(wb.CompareError, match="unknown cases"):
        compare(llama, llama, cases=("batch", "sideways"))
    with pytest.raises(wb.CompareError, match="list of transformer blocks"):
        compare(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))


def test_hooks_are_removed_and_weights_restored(llama):
    cand = HandLlama(llama, "qk_perm")
    before = copy.deepcopy(cand.state_dict())
    eps = cand.layers[0].attn_norm.eps
    c = compare(llama, cand)
    assert c.diagnosis is not None and len(c.diagnosis.trials) >= 8  # every fix was applied, then undone
    for model in (llama, cand):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in cand.state_dict().items())
    assert cand.layers[0].attn_norm.eps == eps


def test_hooks_are_removed_when_the_candidate_raises(llama):
    cand = HandLlama(llama)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    cand.layers[1].mlp.forward = broken
    with pytest.raises(wb.CompareError, match="boom") as caught:
        compare(llama, cand)
    assert all(not m._forward_hooks for m in cand.modules())
    assert isinstance(caught.value.__cause__, RuntimeError) and str(caught.value.__cause__) == "boom"
    assert "the candidate (HandLlama) raised RuntimeError on a 2-token probe" in str(caught.value)


def test_user_inputs_and_case_selection(llama):
    ids = torch.randint(5, 120, (3, 6), generator=torch.Generator().manual_seed(1))
    c = compare(llama, HandLlama(llama, "no_scale"), ids, cases=("padded",))
    assert c.cases == ("padded",)
    assert c.first_divergence.case == "padded" and c.diagnosis.cause.name == "scale x 1/sqrt(D)"


def test_summary_says_where_and_why_with_bounds_for_noise(llama):
    c = compare(llama, HandLlama(llama, "eps"))
    text = repr(c)
    assert "first divergence at block 0 attention norm (batch inputs)" in text
    assert "cause: the candidate's norm epsilon is 1e-05, the reference's 1e-06" in text
    assert "leaves < 1e-05" in text  # within noise: a bound, never a raw float
    assert c.summary() == text
    clean = compare(llama, HandLlama(llama))
    assert repr(clean).splitlines()[-1] == "equivalent within noise (every point below 1e-05 relative)"


def test_figure_has_noise_band_a_line_per_case_and_the_first_divergence(llama):
    from workbench.viz.compare import divergence_figure

    c = compare(llama, HandLlama(llama, "mask_shift"))
    fig = divergence_figure(c)
    names = [t.name for t in fig.data]
    assert names[1].startswith("noise") and names[2:5] == ["batch", "padded", "cached"]
    assert names[-1] == "first divergence" and list(fig.data[-1].x) == ["block 0 attention"]
    assert fig.data[0].y[0] == c.tolerance and fig.layout.yaxis.type == "log"
    batch = fig.data[2]
    assert list(batch.x) == [e.label for e in c.errors_for("batch")]
    assert batch.y[list(batch.x).index("block 0 attention")] > c.tolerance


def test_html_export_escapes_names_and_holds_every_part(llama, tmp_path):
    cand = HandLlama(llama, "qk_perm")
    cand.add_module("<script>alert(1)</script>", torch.nn.Linear(2, 2))
    c = compare(llama, cand)
    page = c.save_html(tmp_path / "cmp.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "rope-permuted" in page and "Diagnosis at the first divergence" in page and "plotly" in page
    assert "weights: undo rope-permuted" in c._repr_html_()
    with pytest.raises(wb.InputError, match="ending in .html"):
        c.save_html(tmp_path / "cmp.txt")


def test_compare_view_wires_the_case_boxes(llama, tmp_path):
    c = compare(llama, HandLlama(llama, "padding"))
    view = wb.CompareView(c)
    assert set(view.boxes) == {"batch", "padded", "cached"}
    view.boxes["batch"].value = False
    visible = {t.name: t.visible for t in view.figure.data if t.name in view.boxes}
    assert visible == {"batch": False, "padded": True, "cached": True}
    assert "ignores the padding" in view.diagnosis.value
    assert "q_proj" in view.weights.value
    page = view.save_html(tmp_path / "view.html").read_text()
    assert "ignores the padding" in page
    with pytest.raises(wb.InputError, match="result of workbench.compare"):
        wb.CompareView("not a comparison")


def test_cli_exit_code_is_one_on_divergence(tmp_path, capsys):
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny")).eval()
    wb.save_pretrained(model, tmp_path / "a")
    with torch.no_grad():
        model.blocks[0].mlp.down.weight.mul_(3)
    wb.save_pretrained(model, tmp_path / "b")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert "equivalent within noise" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--html", str(tmp_path / "r.html")]) == 1
    out = capsys.readouterr().out
    assert "first divergence at block 0 mlp" in out and "scaled" in out and (tmp_path / "r.html").exists()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--patching"]) == 1
    out = capsys.readouterr().out
    assert "block 0 mlp is the first point whose reference activation closes >= 99% of it" in out


def test_errors_are_nan_for_missing_points_and_inf_for_shape_mismatch():
    from workbench.compare.activations import rel_error

    valid = torch.ones(1, 2, dtype=torch.bool)
    assert math.isnan(rel_error(None, torch.zeros(1, 2, 3), valid))
    assert math.isinf(rel_error(torch.zeros(1, 2, 4), torch.zeros(1, 2, 3), valid))
    assert rel_error(torch.ones(1, 2, 3) * 1.5, torch.ones(1, 2, 3), valid) == 0.5


def test_a_model_without_attention_mask_skips_the_padded_case(llama):
    class NoMask(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids)

    c = compare(llama, NoMask(HandLlama(llama)))
    assert c.cases == ("batch", "cached") and c.equivalent
    assert c.notes == ("padded case skipped: NoMask's forward takes no attention_mask",)
    assert "note: padded case skipped" in c.summary()
    with pytest.raises(wb.CompareError, match="no case left"):
        compare(llama, NoMask(HandLlama(llama)), cases=("padded",))
