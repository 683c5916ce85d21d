"""The `positions` check on a model that ignores position_ids by design: BLOOM's ALiBi biases attention by
distance, computed from the mask, so stretched position ids change nothing while token order does."""

from __future__ import annotations

import pytest
import torch
from bugzoo.zoo import ZOO

from workbench.doctor import diagnose

transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_alibi_positions_pass_through_the_reordering_probe():
    torch.manual_seed(0)
    bloom = transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=128, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    f = diagnose(bloom, checks=["positions"], progress=False)["positions"]
    assert f.status == "pass", f.summary
    assert f.evidence["position_ids_used"] is False
    assert f.evidence["stretched_position_ids_delta"] <= f.evidence["tolerance"]  # position_ids really ignored
    assert f.evidence["first_block_reordered_delta"] > 10 * f.evidence["first_block_tolerance"]  # order matters
    assert "ALiBi" in f.summary and "continue past the cache" in f.summary


def test_a_model_without_positions_still_fails_with_the_reordering_evidence():
    build, _, _ = ZOO["no_positions"]
    f = diagnose(build().eval(), checks=["positions"], progress=False)["positions"]
    assert f.status == "fail" and "ignores the order of the tokens before it" in f.summary
    assert f.evidence["first_block_reordered_delta"] <= f.evidence["first_block_tolerance"]
