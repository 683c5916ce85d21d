"""Translation between HF transformers `config.json` dicts and `ModelConfig`."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .config import ModelConfig, RopeScaling

SUPPORTED_MODEL_TYPES = ("gpt2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """GPT-2 and Llama configs map onto fields; any other model type is refused by name."""
    try:
        return _config_from_hf(hf)
    except KeyError as exc:
        raise ConfigError(
            f"the HF {hf.get('model_type')} config lacks the required field {exc.args[0]!r}; "
            "check that config.json is complete."
        ) from None


def _config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        d = hf["n_embd"]
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-2 activation_function={act!r} is not supported; use 'gelu_new'.")
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf["n_positions"],
            positions="learned",
            norm="layernorm",
            norm_placement="pre",
            mlp="gelu",
            tie_embeddings=hf.get("tie_word_embeddings", True),
            attn_bias=True,
            mlp_bias=True,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            dropout=0.0,
            init_std=hf.get("initializer_range", 0.02),
        )
    if model_type == "llama":
        rope_scaling = rope_scaling_from_hf(hf)  # first: an unsupported rope type is the real problem
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"Llama hidden_act={hf['hidden_act']!r} is not supported; use 'silu'.")
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, d // h):
            raise ConfigError(
                f"head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads={d // h}; "
                "a decoupled head_dim is not supported."
            )
        # transformers 4 writes rope_theta at the top level, 5 inside rope_parameters
        nested = ((hf.get(key) or {}).get("rope_theta") for key in ("rope_parameters", "rope_scaling"))
        thetas = (hf.get("rope_theta"), *nested)
        theta = next((t for t in thetas if t is not None), 10000.0)
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            d_model=d,
            n_layers=hf["num_hidden_layers"],
            n_heads=h,
            n_kv_heads=hf.get("num_key_value_heads") or h,
            d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            positions="rope",
            norm="rmsnorm",
            norm_placement="pre",
            mlp="swiglu",
            tie_embeddings=hf.get("tie_word_embeddings", False),
            attn_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            rope_theta=float(theta),
            rope_scaling=rope_scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            dropout=0.0,
            init_std=hf.get("initializer_range", 0.02),
        )
    raise ConfigError(
        f"model_type={model_type!r} is not supported; supported HF model types are {SUPPORTED_MODEL_TYPES}."
    )


def rope_scaling_from_hf(hf: dict[str, Any]) -> RopeScaling | None:
    """The RopeScaling in a Llama config: `rope_scaling` (transformers 4) or `rope_parameters` (5).

    Keys are read as transformers reads them: `rope_type` before the older `type`, and llama3's
    original context from a top-level `original_max_position_embeddings`, then the dict, then
    `max_position_embeddings`. Types that change more than inv_freq (dynamic, yarn, ...) are refused.
    """
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling / rope_parameters must be a JSON object, got {params!r}.")
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"Llama rope_scaling type {kind!r} is not supported; only {SUPPORTED_ROPE_TYPES} RoPE types are "
            f"(got rope_scaling={params!r}). Such configs are refused rather than approximated."
        )
    if params.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise ConfigError(
            f"partial_rotary_factor={params['partial_rotary_factor']} is not supported; "
            "the workbench rotates the whole head."
        )
    if kind == "default":
        return None
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
    missing = [key for key in needed if params.get(key) is None]
    if missing:
        raise ConfigError(f"{kind} rope_scaling lacks {missing} (got {params!r}); add them to config.json.")
    original = hf.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    original = original or hf.get("max_position_embeddings", 2048)
    try:
        if kind == "linear":
            return RopeScaling("linear", float(params["factor"]))
        return RopeScaling(
            "llama3",
            float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_seq_len=int(original),
        )
    except ConfigError:  # a ValueError too: keep its own message
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind} rope_scaling holds a non-numeric value ({exc}): {params!r}.") from None


def rope_scaling_to_hf(scaling: RopeScaling) -> dict[str, Any]:
    """The `rope_scaling` entry transformers (4.43+ and 5) reads back into the same inv_freq."""
    if scaling.kind == "linear":
        return {"rope_type": "linear", "factor": scaling.factor}
    return {
        "rope_type": "llama3",
        "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_seq_len,
    }


def hf_architecture(config: ModelConfig) -> str:
    """Which HF architecture can hold this config exactly, or a ConfigError saying why none can."""
    gpt2 = ("learned", "layernorm", "pre", "gelu")
    llama = ("rope", "rmsnorm", "pre", "swiglu")
    key = (config.positions, config.norm, config.norm_placement, config.mlp)
    if key == gpt2 and config.kv_heads == config.n_heads and config.attn_bias and config.mlp_bias:
        return "gpt2"
    if key == llama:
        return "llama"
    raise ConfigError(
        f"No HF transformers architecture matches positions/norm/placement/mlp={key} "
        f"(attn_bias={config.attn_bias}, mlp_bias={config.mlp_bias}, kv_heads={config.kv_heads}); "
        f"GPT-2 needs {gpt2} with MHA and biases, Llama needs {llama}. Save with format='workbench'."
    )


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A `config.json` dict that transformers' AutoConfig reads back into the same model."""
    arch = hf_architecture(config)
    if arch == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": config.vocab_size,
            "n_embd": config.d_model,
            "n_layer": config.n_layers,
            "n_head": config.n_heads,
            "n_inner": config.d_ff,
            "n_positions": config.max_seq_len,
            "n_ctx": config.max_seq_len,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "tie_word_embeddings": config.tie_embeddings,
            "initializer_range": config.init_std,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
        }
    out = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": config.attn_bias,
        "mlp_bias": config.mlp_bias,
        "initializer_range": config.init_std,
        "attention_dropout": config.dropout,
    }
    if config.rope_scaling is not None:
        out["rope_scaling"] = rope_scaling_to_hf(config.rope_scaling)
    return out
