"""`ModelConfig`: the hyperparameters of a decoder-only transformer, frozen and validated."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError
from ..schema import check, dataclass_schema, read_json_object
from . import presets

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
PLACEMENTS = ("pre", "post")
MLPS = ("gelu", "swiglu", "geglu", "none")
ROPE_SCALINGS = ("linear", "llama3")
LEGACY_KEYS = ("attn_bias",)  # older field names `from_dict` still reads (see ModelConfig.attn_bias)


def _check_known(cls: type, data: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass `cls` (a typo must not be silently dropped)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"Unknown {what} {unknown}; known fields are {sorted(names)}.")


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE's inverse frequencies are stretched for contexts longer than pre-training.

    Both kinds only rescale `inv_freq` (see `layers.scaled_inv_freq`), so every path that rotates
    by the model's `Rotary` (forward, KV cache, fast decode) follows. Field names mirror HF's
    `rope_scaling` keys, except `original_max_seq_len` (HF: original_max_position_embeddings).
    """

    kind: str  # "linear": every frequency / factor; "llama3": only long wavelengths / factor, a ramp between
    factor: float  # how far the context was stretched (Llama 3.1: 8, Llama 3.2: 32)
    low_freq_factor: float = 1.0  # llama3: wavelengths above original_max_seq_len / this are divided by factor
    high_freq_factor: float = 4.0  # llama3: wavelengths below original_max_seq_len / this are kept as they are
    original_max_seq_len: int = 8192  # llama3: the pre-training context that wavelengths are measured against

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ConfigError(f"rope_scaling kind={self.kind!r} is unknown; use one of {ROPE_SCALINGS} (or None).")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"rope_scaling {name} must be a positive finite number, got {value!r}.")
        if self.kind == "llama3":
            if self.high_freq_factor <= self.low_freq_factor:
                raise ConfigError(
                    f"llama3 rope_scaling needs high_freq_factor > low_freq_factor, got "
                    f"{self.high_freq_factor} <= {self.low_freq_factor} (Llama 3.x uses 4.0 and 1.0)."
                )
            n = self.original_max_seq_len
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                raise ConfigError(f"rope_scaling original_max_seq_len must be a positive integer, got {n!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeScaling:
        """Build from `dataclasses.asdict` output (a saved config); unknown keys are an error."""
        _check_known(cls, data, "rope_scaling fields")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer. Variants are fields, never model names."""

    vocab_size: int = 256  # rows of the token embedding and the LM head
    d_model: int = 64  # width of the residual stream (C)
    n_layers: int = 2  # number of transformer blocks
    n_heads: int = 4  # query heads (H); head_dim = d_model // n_heads unless attn_head_dim is set
    n_kv_heads: int | None = None  # key/value heads: None = n_heads (MHA), 1 = MQA, between = GQA
    attn_head_dim: int | None = None  # width of one head (D) apart from d_model (Gemma 7B: 256, not 3072/16)
    d_ff: int = 256  # hidden width of the MLP
    max_seq_len: int = 128  # longest sequence the model accepts (size of learned positions, cache bound)
    positions: str = "rope"  # "learned" absolute embeddings (GPT-2) or "rope" rotary (Llama)
    norm: str = "rmsnorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    norm_offset: bool = False  # RMSNorm scales by (1 + weight): weights stored as offsets from one (Gemma)
    norm_placement: str = "pre"  # "pre": x + f(norm(x)); "post": norm(x + f(x))
    mlp: str = "swiglu"  # "gelu" (tanh approx., GPT-2), "swiglu" (Llama), "geglu" (tanh-GELU gate, Gemma), "none"
    tie_embeddings: bool = True  # LM head shares the token embedding's storage
    embed_scale: bool = False  # token embeddings times sqrt(d_model), rounded to the weights' dtype (Gemma)
    qkv_bias: bool = False  # biases on the q/k/v projections (GPT-2, Qwen2)
    out_bias: bool = False  # bias on the attention output projection (GPT-2; Qwen2 has none)
    # The older single switch for qkv_bias and out_bias together, still read from saved configs, presets and
    # calls; it sets both fields and is not stored (reading `config.attn_bias` gives None).
    attn_bias: InitVar[bool | None] = None
    mlp_bias: bool = False  # biases on MLP projections
    rope_theta: float = 10000.0  # RoPE base frequency
    rope_scaling: RopeScaling | None = None  # long-context rescaling of RoPE frequencies (Llama 3.x); None = plain
    norm_eps: float = 1e-5  # epsilon inside every norm
    dropout: float = 0.0  # dropout on embeddings, attention probabilities and residual branches
    init_std: float = 0.02  # std of the normal initialisation of weight matrices

    def __post_init__(self, attn_bias: bool | None) -> None:
        if attn_bias is not None:
            self._take_attn_bias(attn_bias)
        self._check_types()
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        hd = self.attn_head_dim
        if hd is not None and (not isinstance(hd, int) or isinstance(hd, bool) or hd <= 0):
            raise ConfigError(f"attn_head_dim must be a positive integer or None, got {hd!r}.")
        if hd is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of {self.d_model}, or set attn_head_dim."
            )
        kv = self.n_kv_heads
        if kv is not None and (not isinstance(kv, int) or isinstance(kv, bool) or kv <= 0):
            raise ConfigError(f"n_kv_heads must be a positive integer or None, got {kv!r}.")
        if kv is not None and self.n_heads % kv:
            raise ConfigError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}; "
                "each key/value head must serve a whole group of query heads."
            )
        for name, allowed in (
            ("positions", POSITIONS),
            ("norm", NORMS),
            ("norm_placement", PLACEMENTS),
            ("mlp", MLPS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is unknown; use one of {allowed}.")
        if self.positions == "rope" and self.head_dim % 2:
            source = "attn_head_dim" if hd is not None else f"d_model={self.d_model} / n_heads={self.n_heads}"
            raise ConfigError(f"RoPE needs an even head_dim, but {source} = {self.head_dim}.")
        if self.norm_offset and self.norm != "rmsnorm":
            raise ConfigError(
                f"norm_offset=True needs norm='rmsnorm', got norm={self.norm!r}; "
                "the (1 + weight) scale is an RMSNorm variant (Gemma)."
            )
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, RopeScaling):
                raise ConfigError(
                    f"rope_scaling must be a RopeScaling or None, got {type(self.rope_scaling).__name__}; "
                    "build it with RopeScaling(kind, factor, ...) or RopeScaling.from_dict(d)."
                )
            if self.positions != "rope":
                raise ConfigError(
                    f"rope_scaling={self.rope_scaling} needs positions='rope', got positions={self.positions!r}; "
                    "learned positions have no frequencies to scale."
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ConfigError(
                f"norm_eps, rope_theta and init_std must be positive, got "
                f"{self.norm_eps}, {self.rope_theta}, {self.init_std}."
            )

    def _check_types(self) -> None:
        """Switches are booleans, variants strings and real-valued fields finite numbers, as declared.

        A string "false" is truthy and a NaN passes every comparison, so both would load in silence.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}; write a JSON boolean.")
            if f.type == "str" and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}.")
            if f.type == "float" and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            ):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}.")

    def _take_attn_bias(self, attn_bias: bool) -> None:
        """Set qkv_bias and out_bias from the older `attn_bias` switch, which covered both projections."""
        if not isinstance(attn_bias, bool):
            raise ConfigError(f"attn_bias must be True, False or None, got {attn_bias!r}.")
        if (self.qkv_bias or self.out_bias) and (self.qkv_bias, self.out_bias) != (attn_bias, attn_bias):
            raise ConfigError(
                f"attn_bias={attn_bias} contradicts qkv_bias={self.qkv_bias}, out_bias={self.out_bias}; "
                "attn_bias is the older switch for both, so pass qkv_bias and out_bias alone."
            )
        object.__setattr__(self, "qkv_bias", attn_bias)  # frozen: the one place a field is filled in
        object.__setattr__(self, "out_bias", attn_bias)

    @property
    def head_dim(self) -> int:
        """Width of one attention head (D): attn_head_dim, else d_model // n_heads."""
        return self.attn_head_dim if self.attn_head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kv_groups(self) -> int:
        """Query heads served by each key/value head."""
        return self.n_heads // self.kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again); `attn_bias` sets qkv_bias and out_bias."""
        if "attn_bias" in changes:
            both = changes.pop("attn_bias")
            changes = {"qkv_bias": both, "out_bias": both, **changes}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready field values; `rope_scaling` becomes a nested dict (or None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> ModelConfig:
        """Build from a dict of field values (or LEGACY_KEYS); unknown keys are an error, not silently dropped.

        The dict is checked against the fields' declared types first (strictly: "2" is not 2, "false"
        is not False, NaN is not a number), so a ConfigError names the field. source: where it came from.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a JSON object of ModelConfig fields, got {type(data).__name__}.")
        _check_known(cls, {k: v for k, v in data.items() if k not in LEGACY_KEYS}, "config fields")
        schema = dataclass_schema(cast(Any, cls), add=tuple((k, bool | None) for k in LEGACY_KEYS))
        fix = "Write each field with its declared type (see ModelConfig), or save the model again."
        check(schema, data, source=source, error=ConfigError, fix=fix)
        scaling = data.get("rope_scaling")
        if isinstance(scaling, dict):  # the one place a JSON dict turns into a RopeScaling
            data = {**data, "rope_scaling": RopeScaling.from_dict(scaling)}
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """A config from a JSON file of its fields (as `to_dict` writes them)."""
        path = Path(path)
        fix = "Write it with json.dump(config.to_dict(), f)."
        return cls.from_dict(read_json_object(path, error=ConfigError, fix=fix), source=str(path))

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """One of the named presets (`PRESETS`), each declared by the family that holds it."""
        return presets.preset(name)

