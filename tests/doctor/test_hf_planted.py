"""The doctor's power on real implementations: each catalogue bug, planted into HF's own code of two or three
families (`bugzoo.hfplants` patches one model instance and restores it), is caught by its own check, with
evidence that names the module; the same model passes that check again once the plant is removed."""

from __future__ import annotations

import math

import hfzoo
import pytest
from bugzoo import hfplants as plants

from workbench.doctor import diagnose

pytest.importorskip("transformers")

# bug: (plant, the check that must catch it, status it gives, families, evidence key naming the module)
MATRIX = {
    "shifted_mask": (plants.shifted_mask, "causal_leak", "fail", ("llama", "qwen2", "gpt2"), "first_module"),
    "padding_ignored": (plants.padding_ignored, "padding_mask", "fail", ("llama", "gpt2"), "first_module"),
    "positions_restart": (plants.positions_restart, "positions", "fail", ("llama", "gpt2"), "first_module"),
    "missing_scale": (plants.missing_scale, "score_overflow", "fail", ("llama", "opt", "gpt2"),
                      "least_scaled_module"),
    "eval_dropout": (plants.eval_dropout, "determinism", "fail", ("llama", "gpt_neox"), "first_module"),
    "copied_head": (plants.copied_head, "weights", "fail", ("gpt2", "gemma", "opt"), "head"),
    "nan_layer": (plants.nan_layer, "nonfinite", "fail", ("llama", "mixtral", "gpt2"), "first_module"),
    # a mixed placement is reported as a warning (a deliberate design is possible); it names the odd block
    "mixed_norm": (plants.mixed_norm, "norm_placement", "warn", ("llama", "gpt2"), "post_layers"),
}

# where each family keeps its blocks, its attention and its MLP, for the expected module names
BLOCKS = {"llama": "model.layers", "qwen2": "model.layers", "mixtral": "model.layers", "gemma": "model.layers",
          "opt": "model.decoder.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}
ATTN = {"gpt2": "attn", "gpt_neox": "attention"}
EMBEDDING = {"gpt2": "transformer.wte", "gemma": "model.embed_tokens", "opt": "model.decoder.embed_tokens"}


def expected_module(bug: str, family: str) -> str:
    layers, attn = BLOCKS.get(family, ""), ATTN.get(family, "self_attn")
    return {
        "shifted_mask": f"{layers}.0.{attn}",  # every layer leaks: the first one is named
        "padding_ignored": f"{layers}.0.{attn}",
        "positions_restart": {"llama": "model.rotary_emb", "gpt2": "transformer.wpe"}.get(family, ""),
        "missing_scale": f"{layers}.1.{attn}",  # planted in layer 1 only
        "eval_dropout": f"{layers}.1.{attn}",
        "copied_head": "lm_head",
        "nan_layer": f"{layers}.1.mlp",
        "mixed_norm": "1",
    }[bug]


CASES = [(bug, fam) for bug, (_, _, _, fams, _) in MATRIX.items() for fam in fams]


@pytest.mark.parametrize(("bug", "family"), CASES, ids=[f"{b}-{f}" for b, f in CASES])
def test_planted_bug_is_caught_and_named(bug, family):
    plant, name, status, _, key = MATRIX[bug]
    model = hfzoo.build(family)
    with plant(model):
        finding = diagnose(model, checks=[name], progress=False)[name]
    assert finding.status == status, finding.summary
    assert finding.evidence[key] == expected_module(bug, family)
    if key != "post_layers":
        assert expected_module(bug, family) in finding.summary
    assert diagnose(model, checks=[name], progress=False)[name].status == "pass"  # the plant is gone again


def test_missing_scale_evidence_is_the_factor_sqrt_head_dim():
    model = hfzoo.build("opt")  # OPT scales q before SDPA and calls it with scale=1.0
    clean = diagnose(model, checks=["score_overflow"], progress=False)["score_overflow"]
    assert clean.evidence["q_prescale"] == pytest.approx(8**-0.5, rel=1e-4) and clean.evidence["call_scale"] == 1.0
    assert clean.evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(1.0, rel=1e-4)
    with plants.missing_scale(model):
        broken = diagnose(model, checks=["score_overflow"], progress=False)["score_overflow"]
    assert broken.evidence["score_scale_vs_inv_sqrt_d"] == pytest.approx(math.sqrt(8), rel=1e-3)
    assert broken.evidence["q_prescale"] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_a_tied_head_copy_is_caught_after_it_drifts_too(family):
    model = hfzoo.build(family)
    with plants.copied_head(model, step=1e-3):  # as after one optimizer step: no longer equal
        finding = diagnose(model, checks=["weights"], progress=False)["weights"]
    assert finding.status == "fail" and "a separate tensor" in finding.summary
    assert finding.evidence["tie_claimed"] is True and finding.evidence["head_equals_embedding"] is False
    assert finding.evidence["embedding"] == EMBEDDING[family]
