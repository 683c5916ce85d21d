"""Zero false alarms on HF's own implementations: the full diagnosis of each `hfzoo` family (absolute, rotary,
partial-rotary and ALiBi positions, layers without positions, sliding windows, MoE layers, latent attention, q scaled
before SDPA, declared or absent score scales, per-head q/k norms, norms on sublayer outputs) has no failure.

The one justified warning is `input_validation`: HF leaves out-of-range ids to the embedding lookup (a raw
IndexError, a device-side assert on CUDA) and does not check the length up front. BLOOM declares no
maximum length, so its over-long probe is not run and only the ids are judged.
"""

from __future__ import annotations

import hfzoo
import pytest
import torch

from workbench.doctor import CHECK_NAMES, diagnose
from workbench.doctor.checks_structure import _block_placement

pytest.importorskip("transformers")


# scores relative to q.k/sqrt(head_dim) (head_dim 8) where a family defines another scale: Granite's
# attention_multiplier (0.3), GPT-Neo's absent factor
SCALE = {"granite": 0.3 * 8**0.5, "gpt_neo": 8**0.5}


@pytest.fixture(scope="module")
def reports():
    cache: dict[str, object] = {}

    def get(name: str):  # noqa: ANN202
        if name not in cache:
            cache[name] = diagnose(hfzoo.build(name), progress=False)
        return cache[name]

    return get


@pytest.mark.parametrize("family", hfzoo.FAMILIES)
def test_family_is_clean(reports, family):
    report = reports(family)
    assert [f.check for f in report] == list(CHECK_NAMES)
    assert report.failed == [], [(f.check, f.summary) for f in report.failed]
    assert {f.check: f.status for f in report if f.status != "pass"} == {"input_validation": "warn"}
    assert report["input_validation"].evidence["id_equal_to_vocab"] == "lowlevel"
    # every check judged the model: the scale was measured, not skipped, and is what the family defines
    scale = report["score_overflow"].evidence
    # the stressed scores are a few units: mask values (float16's minimum, which GPT-Neo writes before adding a
    # float32 mask) are not taken for scores
    assert scale["fp16_headroom"] > 100
    if family == "deepseek_v3":  # latent attention: each key head joins two projections, so no single source
        assert scale["scale_judged"] is False and scale["unjudged_module"] == "model.layers.0.self_attn"
    else:
        assert scale["scale_judged"] is True
        assert scale["score_scale_vs_inv_sqrt_d"] == pytest.approx(SCALE.get(family, 1.0), rel=1e-3)
    assert report["kv_cache"].evidence["explicit_position_ids"] is True
    assert report["beam_search"].evidence["width1_equals_greedy"] is True


def test_opt_queries_scaled_before_sdpa_are_measured_not_flagged(reports):
    f = reports("opt")["score_overflow"]
    assert f.status == "pass"
    assert f.evidence["call_scale"] == 1.0 and f.evidence["q_prescale"] == pytest.approx(8**-0.5, rel=1e-4)


def test_bloom_alibi_positions_and_scale_are_judged(reports):
    r = reports("bloom")
    positions = r["positions"].evidence
    assert positions["position_ids_used"] is False  # ALiBi: from the mask, by design
    assert positions["first_block_reordered_delta"] > 10 * positions["first_block_tolerance"]
    # the scale is fitted through BLOOM's baddbmm(alibi, q, k^T, alpha=1/sqrt(D)) on the eager path
    assert r["score_overflow"].evidence["call_scale"] == pytest.approx(8**-0.5, rel=1e-3)


def test_gemma3_declared_query_scale_is_read_from_the_config(reports):
    f = reports("gemma3")["score_overflow"]
    assert f.evidence["declared_by"] == "query_pre_attn_scalar=8" and "as the config declares" in f.summary


def test_sliding_window_and_moe_decode_like_a_full_recompute(reports):
    mistral, mixtral = reports("mistral"), reports("mixtral")
    assert mistral["kv_cache"].evidence["prefill"] + mistral["kv_cache"].evidence["decode_steps"] > 6  # > window
    for r in (mistral, mixtral):
        assert r["kv_cache"].status == "pass" and r["padding_mask"].status == "pass"


def test_a_gpt2_whose_context_is_shorter_than_the_probes_says_na():
    import transformers

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=128, n_positions=4, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)).eval()
    report = diagnose(model, progress=False)
    assert report.failed == []
    na = [f for f in report if f.status == "n/a"]
    assert len(na) == 13 and all("the model's context is 4" in f.summary for f in na)


def test_olmo2_norms_on_the_sublayer_outputs_are_one_placement(reports):
    f = reports("olmo2")["norm_placement"]
    assert f.status == "pass" and f.evidence["sublayer_blocks"] == 2 and "(x + norm(f(x)))" in f.summary


def test_sublayer_placement_needs_the_output_to_be_the_input_plus_norm_outputs():
    g = torch.Generator().manual_seed(0)
    x, inner, n1, n2 = (torch.randn(1, 4, 8, generator=g) for _ in range(4))  # inner: a q norm of the same width
    norms = [(None, inner), (None, n1), (None, n2)]
    assert _block_placement(x, x + n1 + n2, norms) == "sublayer"
    assert _block_placement(x, x + 2 * n1 + n2, norms) == "none"  # a branch scaled after its norm: not that form
    assert _block_placement(x, x + n1 + n2, [(None, inner)]) == "none"
