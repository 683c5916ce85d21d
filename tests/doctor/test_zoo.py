"""Every bug-zoo model is flagged by its own check, with the right evidence, and by no unrelated check."""

from __future__ import annotations

import math

import pytest
from bugzoo.zoo import ZOO

from workbench.doctor import diagnose


def flagged(report) -> set[str]:
    return {f.check for f in report if f.status in ("fail", "warn")}


@pytest.fixture(scope="module")
def reports():
    """One full diagnosis per zoo model, shared by the tests of this module."""
    return {name: diagnose(build(), progress=False) for name, (build, _, _) in ZOO.items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_exactly_the_relevant_checks_fire(reports, name):
    _, expected, collateral = ZOO[name]
    assert flagged(reports[name]) == expected | set(collateral)


def test_causal_leak_evidence(reports):
    f = reports["shifted_mask"]["causal_leak"]
    assert f.status == "fail"
    assert f.evidence["max_abs_delta_earlier_logits"] > 10 * f.evidence["tolerance"]
    # the shifted mask lets position p see p + 1: the first changed token is seen one position earlier
    assert f.evidence["at_position"] == f.evidence["future_changed_from"] - 1


def test_padding_evidence(reports):
    f = reports["ignores_padding"]["padding_mask"]
    assert f.status == "fail" and f.evidence["left_pad_max_abs_delta"] > f.evidence["tolerance"]
    assert f.evidence["right_pad_max_abs_delta"] <= f.evidence["tolerance"]  # right pads come after: harmless


def test_positions_evidence(reports):
    assert reports["no_positions"]["positions"].evidence["stretched_position_ids_delta"] == 0.0
    restart = reports["cache_restarts_positions"]
    assert restart["positions"].evidence["cached_decode_delta"] > restart["positions"].evidence["tolerance"]
    assert restart["kv_cache"].status == "pass"  # with explicit position ids the cache itself is right


def test_kv_cache_evidence(reports):
    f = reports["cache_order"]["kv_cache"]
    assert f.status == "fail" and f.evidence["max_abs_delta"] > f.evidence["tolerance"]
    assert "continuation_judged" in reports["cache_order"]["positions"].evidence


def test_norm_placement_names_layers(reports):
    f = reports["mixed_norm"]["norm_placement"]
    assert f.status == "warn"
    assert f.evidence["pre_layers"] == "0" and f.evidence["post_layers"] == "1"
    assert "blocks.1" in f.summary


def test_score_overflow_measures_missing_scale(reports):
    f = reports["no_scale"]["score_overflow"]
    assert f.status == "fail"
    assert f.evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(math.sqrt(128), rel=1e-2)


def test_nonfinite_names_the_layer(reports):
    f = reports["nan_layer"]["nonfinite"]
    assert f.status == "fail" and f.evidence["first_module"] == "blocks.1"  # the block that takes the log
    assert f.evidence["input_finite"] is True and f.evidence["nan"] > 0
    # comparisons of NaN logits are not judged: they step aside instead of failing
    assert reports["nan_layer"]["causal_leak"].status == "n/a"


def test_gradient_and_init_evidence(reports):
    assert "blocks.0" in reports["detached"]["gradients"].summary
    f = reports["exploding_init"]["init_scale"]
    assert f.evidence["max_std_x_sqrt_fan_in"] == pytest.approx(math.sqrt(128), rel=0.1)  # N(0, 1) at fan-in 128


def test_determinism_and_weights_evidence(reports):
    f = reports["eval_dropout"]["determinism"]
    assert f.status == "fail" and f.evidence["delta_new_seed"] > 0
    assert reports["eval_dropout"]["batch_invariance"].status == "n/a"
    w = reports["copied_embedding"]["weights"]
    assert w.evidence["head_equals_embedding"] is True and w.evidence["head_shares_embedding_storage"] is False


def test_generation_evidence(reports):
    leak = reports["leaky_cache"]["generation_memory"]
    assert leak.evidence["alive_after_generate"] == leak.evidence["tracked_objects"] > 0
    beam = reports["sorted_reorder"]["beam_search"]
    assert beam.evidence["width1_equals_greedy"] is True and beam.evidence["max_score_gap"] > 1e-3


def test_input_validation_and_traffic_evidence(reports):
    f = reports["clamping"]["input_validation"]
    assert f.evidence["id_equal_to_vocab"] == "silent" and f.evidence["negative_id"] == "silent"
    t = reports["chatty"]["host_device"]
    assert t.evidence["transfers"] == 2 and t.evidence["syncs_in_layers"] == 2
    assert "blocks.0.attn" in t.summary and "blocks.1.attn" in t.summary
    assert reports["cross_batch"]["batch_invariance"].evidence["max_abs_delta"] > 1e-3
