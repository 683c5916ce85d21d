"""Attention capture: probabilities, per-head metrics and budgeted CPU storage.

The three kinds of event of the observation layer (`workbench.lm.observe`) feed one `AttentionCollector`:
- "hook": the workbench model's `hook_pattern` sites (hooking one switches that layer to eager);
- "sdpa": calls of `torch.nn.functional.scaled_dot_product_attention`, whose probabilities are
  recomputed (float32, one query chunk at a time) for the selected layers only;
- "softmax": a hand-written softmax over the last dim of a 4-D (B, H, T, S) tensor, or of a causal 3-D
  (N, T, T) one, recorded as (N, 1, T, T) (heads folded into N, or one module per head).
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CaptureError
from ..lm.observe import SdpaCall
from .records import HEAD_METRICS, AttentionRecord

CHUNK_BYTES = 32 * 2**20  # float32 probabilities materialised at once per layer while recomputing
MAX_DOWNSAMPLE = 64  # beyond this factor a map is skipped rather than stored


@dataclass(frozen=True)
class AttentionSelection:
    """Which attention to keep. None means all; negative query indices count from the end."""

    layers: Sequence[int | str] | None = None  # layer ordinals or module-path regexes
    heads: Sequence[int] | None = None  # heads whose maps are stored (metrics cover all heads)
    queries: Sequence[int] | slice | None = None  # query rows
    batch: int | Sequence[int] | None = 0  # batch rows; None = all
    budget_bytes: int = 256 * 2**20  # float16 map bytes kept on the CPU for the whole trace

    def __post_init__(self) -> None:
        """Refuse, before any forward runs, what is wrong whatever the model: types, negative layers or
        heads, duplicates, empty lists, a zero slice step, a negative budget. Indices past a layer's
        heads, batch rows or queries depend on shapes and are reported when the trace exits."""
        _check_indices("attention_layers", self.layers, allow_str=True, allow_negative=False)
        _check_indices("attention_heads", self.heads, allow_negative=False)
        _check_indices("attention_batch", self.batch)
        if isinstance(self.queries, slice):
            parts = (self.queries.start, self.queries.stop, self.queries.step)
            if not all(v is None or _is_int(v) for v in parts):
                raise CaptureError(f"attention_queries={self.queries!r}: slice bounds must be integers or None.")
            if self.queries.step is not None and self.queries.step <= 0:
                raise CaptureError(f"attention_queries={self.queries!r}: the slice step must be positive.")
        else:
            _check_indices("attention_queries", self.queries)
        if not _is_int(self.budget_bytes) or self.budget_bytes < 0:
            raise CaptureError(f"attention_budget_bytes must be an integer >= 0, got {self.budget_bytes!r}.")

    def wants_layer(self, layer: int, module: str) -> bool:
        if self.layers is None:
            return True
        for sel in [self.layers] if isinstance(self.layers, (int, str)) else self.layers:
            if isinstance(sel, int) and sel == layer:
                return True
            if isinstance(sel, str) and (sel == module or re.search(sel, module)):
                return True
        return False


def _is_int(v: Any) -> bool:
    """An integer index (Python, numpy or a 0-d integer tensor), but not a bool."""
    if isinstance(v, bool):
        return False
    try:
        operator.index(v)  # probing: anything without __index__ raises
    except TypeError:
        return False
    return True


def _check_indices(name: str, sel: Any, *, allow_str: bool = False, allow_negative: bool = True) -> None:
    """`sel` is None, an int, or a non-empty sequence of distinct ints (or regex strings, allow_str)."""
    if sel is None or _is_int(sel):
        items = [] if sel is None else [sel]
    elif isinstance(sel, (str, bytes)) or not isinstance(sel, Sequence):
        what = "ordinals or module-path regexes" if allow_str else "integers"
        raise CaptureError(f"{name} must be a list of {what} (or None for all), got {type(sel).__name__} {sel!r}.")
    else:
        items = list(sel)
        if not items:
            raise CaptureError(f"{name}=[] selects nothing; pass None to keep all, or name at least one.")
    for v in items:
        if allow_str and isinstance(v, str):
            try:
                re.compile(v)
            except re.error as err:
                raise CaptureError(f"{name}: {v!r} is not a valid regular expression ({err}).") from err
            continue
        if not _is_int(v):
            raise CaptureError(f"{name} holds {v!r} ({type(v).__name__}); use integers.")
        if not allow_negative and operator.index(v) < 0:
            raise CaptureError(f"{name} holds {v}; {name.split('_')[1]} count from 0.")
    ints = [operator.index(v) for v in items if not isinstance(v, str)]
    if len(set(ints)) != len(ints):
        raise CaptureError(f"{name}={list(items)!r} repeats an index; name each one once.")


def _rows(sel: Sequence[int] | slice | int | None, n: int) -> tuple[list[int], list[int]]:
    """(selected rows in [0, n), sorted; the selected indices that do not exist for length n)."""
    idx = torch.arange(n)
    if sel is None:
        return idx.tolist(), []
    if isinstance(sel, slice):
        return sorted(set(idx[sel].tolist())), []
    given: list[Any] = [sel] if _is_int(sel) else list(sel)  # type: ignore[arg-type]  # a sequence here
    items = [operator.index(i) for i in given]
    inside = [i for i in items if -n <= i < n]
    picked = idx[inside].tolist() if inside else []
    return sorted(set(picked)), [i for i in items if not -n <= i < n]


class AttentionCollector:
    """Turns probability chunks into AttentionRecords under one byte budget."""

    def __init__(self, selection: AttentionSelection) -> None:
        self.sel = selection
        self.records: list[AttentionRecord] = []
        self.used_bytes = 0
        self.skipped = 0
        self.downsampled = 0
        self._layers: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._pending: list[tuple[AttentionRecord, torch.Tensor]] = []
        self.errors: list[str] = []  # selections that cannot apply (heads or batch rows that do not exist)
        self.notes: list[str] = []  # calls recorded partly or not at all (queries outside, unusual shapes)

    # --- layer bookkeeping ----------------------------------------------------------------------
    def assign_layer(self, module: str, layer: int | None = None) -> int:
        if module not in self._layers:
            self._layers[module] = len(self._layers) if layer is None else layer
        return self._layers[module]

    def wants(self, module: str) -> bool:
        return self.sel.wants_layer(self.assign_layer(module), module)

    # --- entry points ---------------------------------------------------------------------------
    # Both run inside the model's forward, so they never raise: a selection that cannot apply to this
    # call, or a failure, is kept in `errors`/`notes` and reported by the trace after its hooks are gone.
    def add_probs(self, module: str, source: str, probs: torch.Tensor) -> None:
        """Record materialised probabilities (B, H, T, S) of `module`."""
        self._guard(module, self._add_probs, module, source, probs)

    def add_sdpa(self, module: str, call: SdpaCall) -> None:
        """Recompute softmax(q k^T * scale + mask) of one SDPA call of `module`, a query chunk at a time;
        q (B, H, T, D) or (N, T, D), k alike.

        A 3-D call (N, T, D) is recorded with H=1 and N batch rows: that is what the call says, and
        a module that folds heads into N cannot be unfolded without guessing its layout."""
        self._guard(module, self._add_sdpa, module, call)

    def covers_most(self, call: SdpaCall) -> bool:
        """Whether the selection asks for at least half of this call's (batch row, query) pairs: then the
        probabilities are best computed once for all rows, in place of SDPA (see workbench.lm.observe)."""
        B, _, T, _ = call.shape
        nb = B if self.sel.batch is None else 1 if _is_int(self.sel.batch) else len(self.sel.batch)  # type: ignore[arg-type]
        q = self.sel.queries
        nq = T if q is None else len(range(T)[q]) if isinstance(q, slice) else 1 if _is_int(q) else len(q)  # type: ignore[arg-type]
        return 2 * min(nb, B) * min(nq, T) >= B * T

    def _guard(self, module: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:  # never kill the user's forward; reported at exit instead
            self.errors.append(f"{module or 'root'}: attention capture failed ({type(err).__name__}: {err})")

    def _select(self, module: str, B: int, H: int, T: int) -> tuple[list[int], list[int], list[int]] | None:
        """Batch rows, heads and queries of one call, or None (noted) when the selection cannot apply."""
        batch, bad_batch = _rows(self.sel.batch, B)
        heads, bad_heads = _rows(self.sel.heads, H)
        queries, bad_queries = _rows(self.sel.queries, T)
        name = module or "root"
        if bad_heads:
            self.errors.append(f"attention_heads={self.sel.heads!r} names head(s) {bad_heads}, but "
                               f"{name} has {H} heads; choose heads in [0, {H}).")
        if bad_batch:
            self.errors.append(f"attention_batch={self.sel.batch!r} names row(s) {bad_batch}, but the forward ran on "
                               f"a batch of {B}; choose rows in [0, {B}) (negative counts from the end).")
        if bad_heads or bad_batch:
            return None
        if bad_queries or not queries:
            self.notes.append(f"{name} call with {T} queries: attention_queries={self.sel.queries!r} "
                              f"{'selects none of them' if not queries else f'misses {bad_queries}'}")
        if not queries:
            return None
        return batch, heads, queries

    def _add_probs(self, module: str, source: str, probs: torch.Tensor) -> None:
        B, H, T, S = probs.shape
        picked = self._select(module, B, H, T)
        if picked is None:
            return
        batch, heads, queries = picked
        q_idx = torch.tensor(queries, device=probs.device)
        sub = probs.detach()[batch]  # (b, H, T, S)

        def chunks(rows: torch.Tensor | None) -> torch.Tensor:
            return (sub if rows is None else sub.index_select(2, rows)).float()  # (b, H, t, S)

        used = sub.amax(dim=(0, 1, 2)) > 0  # (S,) keys that receive any weight
        self._record(module, source, [B, H, T, S], batch, heads, queries, q_idx, chunks, _key_length(used, T))

    def _add_sdpa(self, module: str, call: SdpaCall) -> None:
        if call.query.dim() not in (3, 4) or call.key.dim() != call.query.dim():
            self.notes.append(f"{module or 'root'}: an SDPA call with {call.query.dim()}-D queries was not recorded "
                              "(only (B, H, T, D) and (N, T, D) are)")
            return
        B, H, T, S = call.shape
        picked = self._select(module, B, H, T)
        if picked is None:
            return
        batch, heads, queries = picked
        q_idx = torch.tensor(queries, device=call.query.device)

        def chunks(rows: torch.Tensor | None) -> torch.Tensor:
            return call.probabilities(batch, rows)  # (b, H, t, S)

        allowed = call.allowed_keys()  # keys masked for every row (unwritten static-cache slots) do not count
        key_length = S if allowed is None else _key_length(allowed, T)
        self._record(module, source="sdpa", full_shape=[B, H, T, S], batch=batch, heads=heads, queries=queries,
                     q_idx=q_idx, chunks=chunks, key_length=key_length)

    # --- core -----------------------------------------------------------------------------------
    def _plan(self, nb: int, nh: int, nq: int, S: int) -> int:
        """Downsample factor that fits the remaining budget (1 = full), or 0 to skip."""
        left = self.sel.budget_bytes - self.used_bytes
        f = 1
        while f <= MAX_DOWNSAMPLE:
            if nb * nh * math.ceil(nq / f) * math.ceil(S / f) * 2 <= left:
                return f
            f *= 2
        return 0

    def _record(self, module: str, source: str, full_shape: list[int], batch: list[int], heads: list[int],
                queries: list[int], q_idx: torch.Tensor, chunks: Callable[[torch.Tensor | None], torch.Tensor],
                key_length: int) -> None:
        """`chunks(rows)` gives the probabilities of those query rows, or of every row for None (asked when
        one chunk holds them all, so computed probabilities are used as they are, without a gather)."""
        B, H, T, S = full_shape
        offset = max(0, key_length - T)
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        f = self._plan(len(batch), len(heads), len(queries), S)
        self.skipped += f == 0
        self.downsampled += f > 1
        rec = AttentionRecord(
            index=len(self.records), module=module, layer=self.assign_layer(module), call=call,
            source=source, full_shape=full_shape, batch=batch, heads=heads,
            queries=queries[:: max(f, 1)], query_offset=offset, key_length=key_length,
            downsample=[max(f, 1)] * 2, stored=f > 0,
        )
        acc = torch.zeros(len(HEAD_METRICS), 2, H, device=q_idx.device)  # (metric, [sum, count], H)
        step = max(1, CHUNK_BYTES // max(1, 4 * len(batch) * H * S))
        if f > 1:
            step = max(f, step - step % f)
        pieces = []
        every_row = len(queries) == T and step >= T  # `queries` is sorted and distinct: then it is 0..T-1
        head_idx = None if len(heads) == H else torch.tensor(heads, device=q_idx.device)
        with torch.no_grad():
            for start in range(0, len(queries), step):
                rows = q_idx[start : start + step]
                p = chunks(None if every_row else rows)  # (b, H, t, S) float32
                _accumulate(acc, p, rows + offset)
                if f:
                    pieces.append(_shrink(p if head_idx is None else p.index_select(1, head_idx), f))
        if pieces:
            rec.map = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
            self.used_bytes += rec.map_bytes
        self._pending.append((rec, acc))
        self.records.append(rec)

    def finish(self) -> None:
        """Move the metric accumulators to the host (one copy per record) and warn about the budget."""
        for rec, acc in self._pending:
            sums, counts = acc.cpu().unbind(1)  # (metric, H) each
            vals = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
            vals[-1] = sums[-1]  # future_max is a max, not a mean
            rec.metrics = {name: vals[i].tolist() for i, name in enumerate(HEAD_METRICS)}
        self._pending.clear()
        if self.notes:
            distinct = list(dict.fromkeys(self.notes))
            warnings.warn(
                f"{len(self.notes)} attention call(s) were recorded partly or not at all: "
                + "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
                + ". Select query rows that exist in every call (negative indices count from the end), or None.",
                stacklevel=3,
            )
        if self.skipped or self.downsampled:
            warnings.warn(
                f"Attention maps exceeded attention_budget_bytes={self.sel.budget_bytes}: "
                f"{self.downsampled} map(s) downsampled, {self.skipped} skipped (metrics kept for all). "
                "Select fewer layers/heads/queries or raise attention_budget_bytes.",
                stacklevel=3,
            )


def _key_length(used: torch.Tensor, T: int) -> int:
    """1 + index of the last key in use (at least T): trailing unused keys are empty cache slots.
    One host read per record; shapes alone cannot tell a static cache's fill level."""
    idx = torch.nonzero(used).flatten()
    last = int(idx[-1]) + 1 if idx.numel() else used.numel()
    return max(last, min(T, used.numel()))


def _shrink(p: torch.Tensor, f: int) -> torch.Tensor:
    """Keep every f-th query row and sum keys in windows of f (rows still sum to 1); CPU float16."""
    p = p[:, :, ::f]  # (b, h, t/f, S)
    if f > 1:
        S = p.shape[-1]
        pad = (-S) % f
        p = F.pad(p, (0, pad)).unflatten(-1, (-1, f)).sum(-1)  # (b, h, t/f, ceil(S/f))
    return p.to("cpu", torch.float16)


_WEIGHTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # see _weights


def _weights(qpos: torch.Tensor, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((5, t*S) float32 weights, (6, 1) row counts) of the metrics that are weighted sums of p over a row:
    distance |q - k|, sink (k = 0), prev (k = q - 1), diag (k = q), and the future mass (k > q); the counts
    are the rows each metric averages over, in HEAD_METRICS order (entropy, distance, sink, prev, diag, future).

    One GEMM of the probabilities with these columns reduces all five in a single read. Cached by the
    query positions and key count, which repeat for every layer of a forward."""
    key = (tuple(qpos.tolist()), S, qpos.device)
    hit = _WEIGHTS.get(key)
    if hit is not None:
        return hit
    t = qpos.numel()
    q, k = qpos[:, None], torch.arange(S, device=qpos.device)[None, :]
    cols = ((q - k).abs(), (k == 0).expand(t, S), k == q - 1, k == q, k > q)
    w = torch.stack([c.float() for c in cols]).reshape(len(cols), t * S)  # (5, t*S)
    prev, diag = int(((qpos >= 1) & (qpos - 1 < S)).sum()), int((qpos < S).sum())
    counts = torch.tensor([t, t, t, prev, diag, t], dtype=torch.float32, device=qpos.device)[:, None]
    if len(_WEIGHTS) > 8:
        _WEIGHTS.clear()
    _WEIGHTS[key] = (w, counts)
    return w, counts


def _plogp(p: torch.Tensor) -> torch.Tensor:
    """p log p elementwise, 0 where p is 0: log of p clamped to the smallest normal float, times p in place.
    A clamped p contributes below 1e-36 to a row's entropy. On the CPU this measured 3.5x faster than
    `torch.special.entr` (whose branch per element does not vectorize) and 5x faster than `xlogy`."""
    tiny = torch.finfo(p.dtype).tiny
    return p.clamp_min(tiny).log_().mul_(p)


def _accumulate(acc: torch.Tensor, p: torch.Tensor, qpos: torch.Tensor) -> None:
    """Add per-head sums and row counts of every metric for probabilities p (b, H, t, S): the entropy
    from one elementwise pass, the five weighted sums (`_weights`) from one GEMM over the batch-summed
    probabilities, the counts from a cached vector, and the future max only when some head puts weight on
    the future (a CPU check; on an accelerator it is always computed, to avoid a synchronisation)."""
    b, H, t, S = p.shape
    if t == 0:
        return
    w, counts = _weights(qpos, S)
    ph = p[0] if b == 1 else p.sum(0)  # (H, t, S)
    # (H, 5): distance, sink, prev, diag, future mass. The weights are stored (5, t*S) and passed transposed:
    # a GEMM with a (t*S, 5) row-major operand measured ~10x slower on the CPU.
    sums = ph.reshape(H, t * S) @ w.T
    acc[0, 0].sub_(_plogp(p).sum((0, 2, 3)))
    acc[1:5, 0].add_(sums[:, :4].T)
    acc[:, 1].add_(counts, alpha=b)
    if p.device.type != "cpu" or bool((sums[:, 4] > 0).any()):
        future = torch.arange(S, device=p.device)[None, :] > qpos[:, None]  # (t, S)
        torch.maximum(acc[5, 0], (p * future).amax(dim=(0, 2, 3)), out=acc[5, 0])
