"""Record types a trace produces. Every field is plain data (ints, floats, strings, lists) so records
serialise to JSON, except attention maps, which are tensors stored in safetensors.

Widgets and the doctor read these; the field comments are the schema.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPE_SHORT = {
    "float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool",
}


@dataclass(slots=True)
class TensorMeta:
    """Shape, dtype and device of one tensor in a module's inputs or outputs."""

    path: str  # where it sits: "args.0", "kwargs.attention_mask", "out", "out.logits", "out.1.0"
    shape: list[int]  # e.g. [1, 128, 576]
    dtype: str  # torch dtype without the "torch." prefix, e.g. "float32"
    device: str  # "cpu", "cuda:0"
    nbytes: int  # numel * element size (the view's bytes, not its storage's)

    def short(self) -> str:
        """Compact text such as `(1, 128, 576) f32`."""
        return f"({', '.join(map(str, self.shape))}) {DTYPE_SHORT.get(self.dtype, self.dtype)}"


@dataclass(slots=True)
class ActStats:
    """Statistics of one activation tensor, computed on its device and synchronised once at exit."""

    numel: int  # number of elements
    mean: float  # mean over all elements (NaN when the tensor holds NaN)
    std: float  # standard deviation (unbiased)
    absmax: float  # largest |x|
    min: float
    max: float
    nan: int  # number of NaN elements
    inf: int  # number of +-Inf elements
    neginf: int = 0  # of `inf`, those that are -Inf (masked attention scores use -Inf on purpose)

    @property
    def nonfinite(self) -> bool:
        return self.nan > 0 or self.inf > 0

    @property
    def only_neginf(self) -> bool:
        """Non-finite only through -Inf, as in masked attention scores (not a numerical fault)."""
        return self.nan == 0 and self.inf > 0 and self.inf == self.neginf


@dataclass(slots=True)
class ModuleRecord:
    """One call of one module. A module called N times gives N records, in execution order."""

    index: int  # position in execution order (order in which calls started), 0-based
    name: str  # module path from named_modules(); "" is the traced module itself
    type: str  # class name, e.g. "Linear", "LlamaDecoderLayer"
    call: int  # 0 for the module's first call in this trace, 1 for its second...
    depth: int  # nesting depth among recorded calls (0 = outermost)
    parent: int  # index of the enclosing recorded call, -1 at the top
    inputs: list[TensorMeta] = field(default_factory=list)  # tensors in args and kwargs (shapes=True)
    outputs: list[TensorMeta] = field(default_factory=list)  # tensors in the output, nested ones too
    params: int = 0  # parameters in this module and its children, tied parameters counted once
    params_own: int = 0  # parameters registered directly on this module (recurse=False)
    params_counted: int = 0  # own parameters not already owned by a module earlier in named_modules()
    trainable_params: int = 0  # of `params`, those with requires_grad (at trace entry)
    param_bytes: int = 0  # bytes of `params`
    grad_bytes: int = 0  # bytes of .grad tensors of `params`, read at trace exit
    time_ms: float | None = None  # forward wall time incl. children (CPU perf_counter / CUDA events)
    self_time_ms: float | None = None  # time_ms minus the time of recorded child calls
    output_bytes: int = 0  # bytes of output tensors (distinct storages); needs memory=True
    saved_bytes: int = 0  # activation bytes saved for backward by this call itself (memory=True, grad on)
    saved_param_bytes: int = 0  # parameter tensors saved for backward (resident anyway, kept apart)
    saved_bytes_total: int = 0  # saved_bytes of this call and all its recorded descendants
    cuda_delta: int | None = None  # CUDA allocated bytes after minus before (memory=True, CUDA, layers)
    cuda_peak: int | None = None  # CUDA peak allocated bytes during the call, absolute
    in_stats: ActStats | None = None  # stats of the first floating input tensor (stats=True)
    out_stats: ActStats | None = None  # stats of the first floating output tensor
    samples: list[float] | None = None  # evenly strided values of the output, for histograms
    finished: bool = False  # False when the forward raised before returning
    end_index: int = -1  # position in order of completion (children finish before parents)
    rank: int = 0  # torch.distributed rank that recorded the call (0 outside torch.distributed)

    @property
    def nonfinite(self) -> bool:
        """True when the output holds NaN or Inf (needs stats=True)."""
        return self.out_stats is not None and self.out_stats.nonfinite

    @property
    def display_name(self) -> str:
        return self.name or f"({self.type})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModuleRecord:
        d = dict(d)
        d["inputs"] = [TensorMeta(**m) for m in d.get("inputs", [])]
        d["outputs"] = [TensorMeta(**m) for m in d.get("outputs", [])]
        for key in ("in_stats", "out_stats"):
            d[key] = ActStats(**d[key]) if d.get(key) else None
        return cls(**d)


HEAD_METRICS = ("entropy", "distance", "sink", "prev", "diag", "future_max")
"""Per-head attention metrics, each a list over all heads of the layer (mean over the selected
batch rows and query rows unless noted):
entropy     -sum p log p in nats; low = focused, log(S) = uniform
distance    mean |query position - key position| weighted by p
sink        weight on key position 0 (first-token / attention-sink mass)
prev        weight on the key just before the query (previous-token heads)
diag        weight on the query's own position
future_max  largest weight on any key after the query (max, not mean): 0 in a causal model, so
            anything above ~1e-6 is a causal-mask leak
Query positions are taken as the last T of the keys in use (offset key_length - T), as in decoding
with a cache; trailing keys that no query may attend (unwritten static-cache slots) are not "in use".
"""


@dataclass
class AttentionRecord:
    """Attention probabilities of one call of one attention layer (after masking and softmax)."""

    index: int  # order among attention records
    module: str  # path of the enclosing module, e.g. "model.layers.3.self_attn"
    layer: int  # ordinal of that module among attention modules, in order of first call
    call: int  # k-th call of this layer in the trace
    source: str  # "hook" (workbench hook_pattern), "sdpa" (recomputed), "softmax" (hand-written)
    full_shape: list[int]  # [B, H, T, S] of the layer's probabilities
    batch: list[int]  # batch rows kept
    heads: list[int]  # heads whose maps are kept (metrics cover all heads)
    queries: list[int]  # query rows kept (indices into T); metrics use these rows too
    query_offset: int  # absolute position of query row 0: key_length - T
    key_length: int = 0  # keys in use: S minus trailing keys no query may attend (empty static-cache slots)
    downsample: list[int] = field(default_factory=lambda: [1, 1])  # [query factor, key factor] applied
    stored: bool = True  # False when the map was skipped for the byte budget (metrics remain)
    metrics: dict[str, list[float]] = field(default_factory=dict)  # HEAD_METRICS -> one value per head
    rank: int = 0  # torch.distributed rank that recorded it
    map: torch.Tensor | None = None  # (len(batch), len(heads), T', S') float16 on CPU

    @property
    def map_bytes(self) -> int:
        return 0 if self.map is None else self.map.numel() * self.map.element_size()

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "map"}
        d["map_shape"] = None if self.map is None else list(self.map.shape)
        return d


@dataclass
class ParamGradRecord:
    """Gradient of one parameter after the backward pass(es) inside a trace (gradients=True)."""

    name: str  # parameter path, e.g. "blocks.0.attn.qkv.weight" (first name of a tied parameter)
    module: str  # owning module path, e.g. "blocks.0.attn.qkv"
    shape: list[int]
    numel: int
    grad_norm: float | None  # L2 norm of .grad (None: no gradient reached it)
    grad_absmax: float | None
    grad_nan: int  # NaN elements in .grad
    grad_inf: int  # Inf elements in .grad
    weight_norm: float  # L2 norm of the parameter after the last backward
    update_ratio: float | None = None  # ||w_after - w_before|| / ||w_before|| of the last optimizer step
    rank: int = 0  # rank that reported it (norms of sharded parameters are already whole)

    @property
    def nonfinite(self) -> bool:
        return self.grad_nan > 0 or self.grad_inf > 0
