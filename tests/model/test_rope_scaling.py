"""Llama 3.x ("llama3") and linear RoPE scaling: config, inv_freq and logits against HF transformers.

The HF models use head_dim 16 and rope_theta 1e4, so the eight wavelengths are 6.3, 20, 63, 199, ...
positions. With original_max_position_embeddings = 64 (bands at 64/4 = 16 and 64/1 = 64) the first
frequency is kept, the next two sit on the ramp and the rest are slowed by `factor`; the sequences
run to position 95, past the original context. q/k weights are enlarged so attention is peaked and
the positions matter: dropping the scaling must move the logits by far more than the tolerance.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import workbench as wb
from workbench.families.hf_config import config_from_hf
from workbench.io.load import load_pretrained
from workbench.model.config import RopeScaling
from workbench.model.decoder import FastDecoder
from workbench.model.layers import Rotary

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

VOCAB, T, PREFILL = 97, 96, 60
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
LINEAR = {"rope_type": "linear", "factor": 4.0}
SCALINGS = {"llama3": LLAMA3, "linear": LINEAR}


def _hf_config(rope_scaling: dict | None) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        rope_scaling=None if rope_scaling is None else dict(rope_scaling),
    )


def _hf_model(rope_scaling: dict) -> transformers.LlamaForCausalLM:
    torch.manual_seed(5)
    hf = transformers.LlamaForCausalLM(_hf_config(rope_scaling)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.normal_(0.0, 0.3)  # peaked attention: rotations change which keys win
    return hf


@pytest.fixture(scope="module", params=sorted(SCALINGS))
def pair(request, tmp_path_factory):
    """(kind, HF model, workbench model loaded from the HF safetensors directory, its directory)."""
    hf = _hf_model(SCALINGS[request.param])
    directory = tmp_path_factory.mktemp(f"hf-{request.param}")
    hf.save_pretrained(directory)
    return request.param, hf, load_pretrained(directory), directory


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(0))


def _hf_logits(hf, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    pos = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", sorted(SCALINGS))
@pytest.mark.parametrize("head_dim, theta, original", [(16, 10000.0, 64), (128, 500000.0, 8192)])
def test_inv_freq_equals_hf_rope_init(kind, head_dim, theta, original):
    rope = dict(SCALINGS[kind]) | ({"original_max_position_embeddings": original} if kind == "llama3" else {})
    hf_cfg = transformers.LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        max_position_embeddings=4 * original,
        rope_theta=theta,
        rope_scaling=rope,
    )
    theirs, _ = ROPE_INIT_FUNCTIONS[kind](hf_cfg, "cpu")
    ours = Rotary(config_from_hf(hf_cfg.to_dict())).inv_freq
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    plain = Rotary(config_from_hf(hf_cfg.to_dict()).replace(rope_scaling=None)).inv_freq
    if kind == "linear":
        torch.testing.assert_close(ours, plain / 4.0, rtol=1e-6, atol=0)
        return
    # the three llama3 bands are all present: kept, ramp (strictly between), divided by factor
    wavelen = 2 * math.pi / plain
    kept, slowed = wavelen < original / 4.0, wavelen > original / 1.0
    ramp = ~kept & ~slowed
    assert kept.any() and slowed.any() and ramp.any()
    assert torch.equal(ours[kept], plain[kept])
    torch.testing.assert_close(ours[slowed], plain[slowed] / 8.0, rtol=1e-6, atol=0)
    assert torch.all(ours[ramp] < plain[ramp]) and torch.all(ours[ramp] > plain[ramp] / 8.0)


def test_hf_config_maps_to_rope_scaling(pair):
    kind, hf, ours, directory = pair
    raw = json.loads((directory / "config.json").read_text())
    assert "rope_parameters" in raw or "rope_scaling" in raw  # transformers 5 writes rope_parameters
    expected = (
        RopeScaling("llama3", 8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
        if kind == "llama3"
        else RopeScaling("linear", 4.0)
    )
    assert ours.config.rope_scaling == expected
    assert ours.config.rope_theta == 10000.0 and ours.config.max_seq_len == 256
    assert ours.load_report.ok and not ours.load_report.unexpected


def test_logits_match_hf_past_original_context(pair, ids):
    kind, hf, ours, _ = pair
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding: row 1's positions are shifted
    theirs = _hf_logits(hf, ids, mask)
    with torch.no_grad():
        mine = ours(ids, attention_mask=mask)
        plain = wb.TransformerLM(ours.config.replace(rope_scaling=None))
        plain.load_state_dict(ours.state_dict())
        unscaled = plain.eval()(ids, attention_mask=mask)
    valid = mask.bool()
    diff = _max_diff(mine[valid], theirs[valid])
    assert diff <= 1e-5, f"{kind}: max |dlogits| vs HF = {diff}"
    # the test reaches the scaled frequencies: plain RoPE gives clearly different logits
    assert _max_diff(unscaled[valid], theirs[valid]) > 1e-2
    with ours.attention_impl("eager"):
        with torch.no_grad():
            assert _max_diff(ours(ids, attention_mask=mask)[valid], theirs[valid]) <= 1e-5


def test_kv_cache_and_fast_decode_match_full_forward(pair, ids):
    """Teacher-forced decoding from position PREFILL to T-1 (past the original 64) through the plain
    cached forward and through `fast.decode_step`; both equal HF's full forward."""
    _, hf, ours, _ = pair
    theirs = _hf_logits(hf, ids)[:, PREFILL - 1 : T - 1]  # (B, T - PREFILL, V): after positions 59..94
    outs = {}
    with torch.no_grad():
        for route in ("plain", "fast"):
            cache = ours.new_cache(ids.shape[0], T)
            step = FastDecoder(ours, cache, graphs=False) if route == "fast" else None
            logits = [ours(ids[:, :PREFILL], cache=cache)[:, -1:]]
            for t in range(PREFILL, T - 1):
                token = ids[:, t : t + 1]  # (B, 1)
                logits.append(step(token) if step else ours(token, cache=cache))
            outs[route] = torch.cat(logits, dim=1)  # (B, T - PREFILL, V)
            if step:
                assert step.last_route == "eager"
    for route, got in outs.items():
        diff = _max_diff(got, theirs)
        assert diff <= 1e-5, f"{route}: max |dlogits| vs HF = {diff}"


def test_greedy_generation_matches_hf(pair, ids):
    _, hf, ours, _ = pair
    prompt = ids[:, :PREFILL]
    gen = transformers.GenerationConfig(max_new_tokens=T - PREFILL, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen)
    assert theirs.shape == (prompt.shape[0], T)
    for fast in (False, True):
        mine = wb.generate(ours, prompt, max_new_tokens=T - PREFILL, fast=fast).sequences
        assert torch.equal(mine, theirs), f"fast={fast}"


def test_save_hf_reloads_in_transformers_with_same_logits(pair, ids, tmp_path):
    kind, _, ours, _ = pair
    wb.save_pretrained(ours, tmp_path, format="hf")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["rope_scaling"]["rope_type"] == kind
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == kind
    with torch.no_grad():
        diff = _max_diff(ours(ids), _hf_logits(hf, ids))
    assert diff <= 1e-5, f"{kind}: max |dlogits| = {diff}"
    assert load_pretrained(tmp_path).config == ours.config  # and back again


def test_workbench_format_keeps_rope_scaling(pair, ids, tmp_path):
    _, _, ours, _ = pair
    wb.save_pretrained(ours, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["config"]["rope_scaling"]
    assert saved["kind"] == ours.config.rope_scaling.kind
    again = load_pretrained(tmp_path)
    assert again.config == ours.config and isinstance(again.config.rope_scaling, RopeScaling)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_config_without_rope_scaling_still_loads():
    """A config dict saved before rope_scaling existed has no such key: it loads as plain RoPE."""
    old = wb.ModelConfig.preset("tiny").to_dict()
    del old["rope_scaling"]
    assert wb.ModelConfig.from_dict(old).rope_scaling is None


def test_config_is_hashable_and_json_round_trips():
    scaling = RopeScaling("llama3", 32.0, original_max_seq_len=8192)
    cfg = wb.ModelConfig.preset("tiny").replace(rope_scaling=scaling)
    assert hash(cfg) == hash(wb.ModelConfig.preset("tiny").replace(rope_scaling=RopeScaling("llama3", 32.0)))
    back = wb.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.rope_scaling == scaling


@pytest.mark.parametrize(
    "hf_rope, kind",
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),  # the pre-4.43 spelling
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}}, "linear"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}, None),
        ({"rope_scaling": None}, None),
    ],
)
def test_hf_spellings(hf_rope, kind):
    base = _hf_config(None).to_dict()
    base.pop("rope_parameters", None)
    cfg = config_from_hf(base | hf_rope)
    assert (cfg.rope_scaling.kind if cfg.rope_scaling else None) == kind
    if "rope_parameters" in hf_rope:
        assert cfg.rope_theta == 500.0  # transformers 5 keeps rope_theta inside rope_parameters


def test_llama3_original_context_defaults_like_transformers():
    """Without original_max_position_embeddings, transformers uses max_position_embeddings."""
    rope = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    raw = _hf_config(None).to_dict() | {"rope_scaling": rope}
    assert config_from_hf(raw).rope_scaling.original_max_seq_len == 256
    hf_cfg = transformers.LlamaConfig.from_dict(raw)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    torch.testing.assert_close(Rotary(config_from_hf(raw)).inv_freq, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic", "longrope"])
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_unsupported_rope_types_are_refused_by_name(rope_type, key):
    raw = _hf_config(None).to_dict() | {key: {"rope_type": rope_type, "factor": 4.0}}
    with pytest.raises(wb.ConfigError, match=f"'{rope_type}' is not supported.*'default', 'linear', 'llama3'"):
        config_from_hf(raw)


@pytest.mark.parametrize(
    "rope, message",
    [
        ({"rope_type": "linear"}, "lacks \\['factor'\\]"),
        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}, "lacks \\['high_freq_factor'\\]"),
        (LLAMA3 | {"factor": 0.0}, "rope_scaling.factor: Input should be greater than 0 \\(got 0.0\\)"),
        (LLAMA3 | {"high_freq_factor": 1.0}, "high_freq_factor > low_freq_factor, got 1.0 <= 1.0"),
        (LINEAR | {"factor": -2.0}, "rope_scaling.factor: Input should be greater than 0 \\(got -2.0\\)"),
        (LINEAR | {"factor": "eight"}, "rope_scaling.factor: Input should be a valid number \\(got 'eight'\\)"),
        ("llama3", "rope_scaling: Input should be a valid dictionary"),
    ],
)
def test_invalid_hf_rope_scaling_is_refused(rope, message):
    with pytest.raises(wb.ConfigError, match=message):
        config_from_hf(_hf_config(None).to_dict() | {"rope_scaling": rope})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RopeScaling("ntk", 2.0), "kind='ntk' is unknown"),
        (lambda: RopeScaling("linear", float("inf")), "factor must be a positive finite number"),
        (lambda: RopeScaling("llama3", 8.0, original_max_seq_len=0), "original_max_seq_len must be a positive"),
        (
            lambda: wb.ModelConfig.preset("tiny-gpt2").replace(rope_scaling=RopeScaling("linear", 2.0)),
            "needs positions='rope'",
        ),
        (lambda: wb.ModelConfig(rope_scaling={"kind": "linear", "factor": 2.0}), "must be a RopeScaling or None"),
        (lambda: wb.ModelConfig.from_dict({"rope_scaling": {"kind": "linear", "scale": 2}}),
         "rope_scaling.scale: Extra inputs are not permitted"),
    ],
)
def test_invalid_rope_scaling_configs(make, message):
    with pytest.raises(wb.ConfigError, match=message):
        make()
