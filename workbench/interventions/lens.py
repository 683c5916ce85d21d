"""The logit lens: what a causal LM would predict if its residual stream stopped at each layer.

`logit_lens(model, ids)` runs one forward with a `ResidualStream` observer (a client of the interception layer) on
the blocks the adapter finds: the input of the first block (the embeddings, layer 0: position tables and
embedding scales included, as HF's `hidden_states[0]`) and the first tensor of each block's output (layers 1..L).
Each is decoded through the model's own readout (`Readout`: final norm, head, and the family's soft-capping or
logit scale), and kept as top-k tokens, the target token's probability and rank, and the entropy, per layer and
position. The readout is checked on the forward itself: the lens at the last layer must give the model's own
logits (`LogitLens.final_gap`), or the lens refuses.

Layers are decoded one at a time, so memory holds one (T, V) logit table, not L of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..display import export_html, notebook_html
from ..errors import InterventionError
from ..lm.adapter import ModelAdapter
from ..lm.intercept import Client, ModuleCall, intercept
from .readout import Readout

__all__ = ["LogitLens", "ResidualStream", "logit_lens"]

EMBEDDINGS = "embeddings"  # the name of layer 0: the input of the first block


@dataclass(frozen=True, eq=False)
class LogitLens:
    """The residual stream of one sequence decoded at every layer. Layer 0 is the input of the first block, layer
    i the output of block i-1; tables are indexed [layer][position] (L+1 layers, T positions, k top tokens)."""

    model: str  # the model's class name
    layers: tuple[str, ...]  # L+1 names: EMBEDDINGS, then each block's module name
    ids: tuple[int, ...]  # the input token ids (T)
    tokens: tuple[str, ...] | None  # their text (T), when a tokenizer was given
    targets: tuple[int | None, ...]  # the target token per position (T); None: none (the last next token)
    target_texts: tuple[str | None, ...] | None  # their text, when a tokenizer was given
    top_ids: tuple[tuple[tuple[int, ...], ...], ...]  # (L+1, T, k) most probable tokens, most probable first
    top_probs: tuple[tuple[tuple[float, ...], ...], ...]  # (L+1, T, k) their probabilities
    top_texts: tuple[tuple[tuple[str, ...], ...], ...] | None  # (L+1, T, k) their text, with a tokenizer
    target_probs: tuple[tuple[float | None, ...], ...]  # (L+1, T) probability of the target; None: no target
    target_ranks: tuple[tuple[int | None, ...], ...]  # (L+1, T) 1 = the most probable token; None: no target
    entropy: tuple[tuple[float, ...], ...]  # (L+1, T) entropy of the decoded distribution, in nats
    readout: str  # how the residual was decoded: "model.norm → lm_head", with any soft-capping or scale
    head: str  # the head's module name (an nn.Embedding for a tied head used as x @ weight.t())
    norm: str | None  # the final norm's module name; None: the head reads the residual as is
    final_gap: float  # largest |lens logits at the last layer - the model's logits|: float noise

    @property
    def n_layers(self) -> int:
        """L+1: the embeddings and every block."""
        return len(self.layers)

    @property
    def n_positions(self) -> int:
        return len(self.ids)

    @property
    def top_k(self) -> int:
        return len(self.top_ids[0][0]) if self.top_ids and self.top_ids[0] else 0

    def first_layer_in_top(self, k: int, position: int = -1) -> int | None:
        """The first layer from which the target stays among the k most probable tokens at `position` up to
        the last layer; None when it is not there at the last layer (or the position has no target)."""
        ranks = [row[position] for row in self.target_ranks]
        if ranks[-1] is None or ranks[-1] > k:
            return None
        layer = len(ranks) - 1
        while layer > 0 and (r := ranks[layer - 1]) is not None and r <= k:
            layer -= 1
        return layer

    def to_dataframe(self) -> Any:
        """One row per (layer, position): the target's probability and rank, the entropy and the top-1 token."""
        import pandas as pd

        rows = []
        for layer, name in enumerate(self.layers):
            for pos in range(self.n_positions):
                rows.append({
                    "layer": layer, "module": name, "position": pos, "token_id": self.ids[pos],
                    "token": self.tokens[pos] if self.tokens else None, "target_id": self.targets[pos],
                    "target_prob": self.target_probs[layer][pos], "target_rank": self.target_ranks[layer][pos],
                    "entropy": self.entropy[layer][pos], "top1_id": self.top_ids[layer][pos][0],
                    "top1": self.top_texts[layer][pos][0] if self.top_texts else None,
                    "top1_prob": self.top_probs[layer][pos][0],
                })
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return (f"LogitLens({self.model}: {self.n_layers} layers × {self.n_positions} positions, top {self.top_k}, "
                f"readout {self.readout}, final gap {self.final_gap:.1e})")

    def _repr_html_(self) -> str:
        """The heatmap (`workbench.viz.lens`), through the display registry."""
        return notebook_html(self)

    def save_html(self, path: str | Path) -> Path:
        """One offline HTML page: the heatmaps of probability, rank and entropy (plotly.js inline)."""
        return export_html(self, path)


class ResidualStream(Client):
    """Observes the residual stream: the first tensor of the first block's input (layer 0) and of each block's
    output (layers 1..L), (B, T, C) each, detached. A block called again (a model whose forward runs twice)
    keeps its last call."""

    def __init__(self, blocks: Sequence[str]) -> None:
        self.blocks = list(blocks)
        self.modules = self.blocks
        self.index = {name: i for i, name in enumerate(blocks)}
        self.states: dict[int, torch.Tensor | None] = {}

    def module_input(self, call: ModuleCall) -> None:
        if self.index[call.name] == 0:
            self.states[0] = _first_tensor(call.args, call.kwargs.get("hidden_states"), *call.kwargs.values())
        return None

    def module_output(self, call: ModuleCall) -> None:
        self.states[self.index[call.name] + 1] = _first_tensor(call.output)
        return None

    def stacked(self) -> list[torch.Tensor]:
        """The L+1 states in layer order; refuses when a block did not run or gave no (B, T, C) tensor."""
        states = [self.states.get(i) for i in range(len(self.blocks) + 1)]
        missing = [i for i, s in enumerate(states) if s is None]
        if missing:
            where = EMBEDDINGS if missing[0] == 0 else self.blocks[missing[0] - 1]
            raise InterventionError(f"the residual stream at {where} was not seen in the forward (the block did not "
                                    "run or returned no tensor); the logit lens reads the first tensor of each "
                                    "block's input and output.")
        return [s.detach() for s in states if s is not None]


def _first_tensor(*values: Any) -> torch.Tensor | None:
    """The first tensor among values, looking into tuples and lists (a block's `(hidden, present)`)."""
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, (tuple, list)):
            found = _first_tensor(*v)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class LensRequest:
    """One sequence and what to read from it: ids (1, T), targets per position (None: no target), k."""

    ids: torch.Tensor
    targets: tuple[int | None, ...]
    top_k: int


def logit_lens(model: nn.Module, ids: torch.Tensor | Sequence[int] | str, *, tokenizer: Any = None,
               target: int | str | None = None, top_k: int = 5, head: str | None = None,
               norm: str | None = None) -> LogitLens:
    """Decode the residual stream of one sequence at every layer through the model's final norm and head.

    ids: (T,) or (1, T) token ids, or text when a tokenizer is given. target: the token whose probability and
    rank are read at every position (an id, or text that the tokenizer makes one token); None: at each
    position, the next input token. head, norm: module names, for a model whose head or final norm the adapter
    cannot find (a head written as `x @ wte.weight.t()`: pass the embedding, head="wte").
    """
    adapter = ModelAdapter(model, tokenizer)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InterventionError(f"top_k={top_k!r}: pass the number of most probable tokens to keep, 1 or more.")
    found = adapter.blocks()
    if found is None:
        raise InterventionError(f"no transformer blocks found in {type(model).__name__} (an nn.ModuleList or "
                                "nn.Sequential of blocks); the logit lens reads the residual stream between them.")
    readout = Readout.find(adapter, head=head, norm=norm)
    request = _request(adapter, ids, tokenizer, target, top_k)
    stream = ResidualStream([name for name, _ in found[1]])
    with torch.no_grad():
        with intercept(model, stream):
            logits = adapter.logits(request.ids, allow_nonfinite=True)  # (1, T, V)
        states = stream.stacked()  # L+1 of (1, T, C)
        readout, gap = readout.fitted(adapter, states[-1], logits)
        tables = LensTables.read(readout, states, request)
    return tables.record(model, [EMBEDDINGS, *stream.blocks], request, tokenizer, readout, gap)


def _request(adapter: ModelAdapter, ids: torch.Tensor | Sequence[int] | str, tokenizer: Any,
             target: int | str | None, top_k: int) -> LensRequest:
    x = _ids(ids, tokenizer).to(adapter.device)  # (1, T)
    V = adapter.vocab_size
    rows = adapter.embedding_rows or V
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= rows):
        bad = int(x.min()) if int(x.min()) < 0 else int(x.max())
        raise InterventionError(f"token id {bad} is outside the model's vocabulary [0, {rows}); check that the "
                                "tokenizer matches the model.")
    T = x.shape[1]
    if target is None:
        following: list[int | None] = [int(i) for i in x[0, 1:].tolist()]
        targets = (*following, None)
    else:
        targets = (_target_id(target, tokenizer, V),) * T
    return LensRequest(x, targets, min(top_k, V))


def _ids(ids: torch.Tensor | Sequence[int] | str, tokenizer: Any) -> torch.Tensor:
    """Token ids as a (1, T) long tensor."""
    if isinstance(ids, str):
        if tokenizer is None:
            raise InterventionError("ids is text; pass tokenizer= to encode it, or pass token ids.")
        ids = list(tokenizer.encode(ids))
    if not isinstance(ids, torch.Tensor):
        ids = list(ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise InterventionError(f"ids must be integer token ids; got {ids!r:.80}. Pass a list of ints, a "
                                    "(T,) or (1, T) long tensor, or text with tokenizer=.")
    x = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, dtype=torch.long)
    if x.dtype not in (torch.long, torch.int32, torch.int64) or x.dim() not in (1, 2) or (
            x.dim() == 2 and x.shape[0] != 1):
        raise InterventionError(f"ids must be one sequence of integer token ids, (T,) or (1, T); got "
                                f"{tuple(x.shape)} {x.dtype}. Lens one row of a batch at a time.")
    if x.numel() == 0:
        raise InterventionError("ids is empty; pass at least one token.")
    return x.reshape(1, -1).long()


def _target_id(target: int | str, tokenizer: Any, V: int) -> int:
    if isinstance(target, str):
        if tokenizer is None:
            raise InterventionError(f"target={target!r} is text; pass tokenizer= to encode it, or a token id.")
        got = list(tokenizer.encode(target))
        bos = getattr(tokenizer, "bos_token_id", None)
        if len(got) == 2 and got[0] == bos:
            got = got[1:]
        if len(got) != 1:
            raise InterventionError(f"target={target!r} encodes to {len(got)} tokens {got}; pass text that is one "
                                    "token (mind the leading space: ' Paris') or a token id.")
        target = int(got[0])
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < V:
        raise InterventionError(f"target={target!r} is outside the vocabulary [0, {V}); pass a token id in it, "
                                "text with tokenizer=, or None for each position's next token.")
    return target


@dataclass
class LensTables:
    """The per-layer readings as nested lists, (L+1, T[, k]), filled one decoded layer at a time."""

    top_ids: list[list[list[int]]]
    top_probs: list[list[list[float]]]
    target_probs: list[list[float | None]]
    target_ranks: list[list[int | None]]
    entropy: list[list[float]]

    @classmethod
    def read(cls, readout: Readout, states: list[torch.Tensor], request: LensRequest) -> LensTables:
        tables = cls([], [], [], [], [])
        has = [t is not None for t in request.targets]
        target = torch.tensor([t or 0 for t in request.targets], device=states[0].device)  # (T,)
        for hidden in states:
            tables.add(readout(hidden)[0].float(), target, has, request.top_k)  # (T, V)
        return tables

    def add(self, logits: torch.Tensor, target: torch.Tensor, has: list[bool], k: int) -> None:
        """One layer: logits (T, V) -> top-k, target probability and rank, entropy."""
        logp = torch.log_softmax(logits, dim=-1)  # (T, V)
        p = logp.exp()
        top = p.topk(k, dim=-1)  # (T, k)
        own = logits.gather(-1, target[:, None].to(logits.device))  # (T, 1)
        rank = (logits > own).sum(-1) + 1  # (T,) 1 = most probable
        p_target = p.gather(-1, target[:, None].to(p.device))[:, 0]  # (T,)
        self.top_ids.append(top.indices.tolist())
        self.top_probs.append(top.values.tolist())
        self.target_probs.append([float(v) if h else None for v, h in zip(p_target.tolist(), has)])
        self.target_ranks.append([int(r) if h else None for r, h in zip(rank.tolist(), has)])
        self.entropy.append((-(p * logp.nan_to_num(neginf=0.0)).sum(-1)).tolist())

    def record(self, model: nn.Module, layers: list[str], request: LensRequest, tokenizer: Any,
               readout: Readout, gap: float) -> LogitLens:
        ids = tuple(int(i) for i in request.ids[0].tolist())
        texts = TokenTexts(tokenizer) if tokenizer is not None else None
        return LogitLens(
            model=type(model).__name__, layers=tuple(layers), ids=ids,
            tokens=texts.many(ids) if texts else None, targets=request.targets,
            target_texts=tuple(None if t is None else texts.one(t) for t in request.targets) if texts else None,
            top_ids=_frozen(self.top_ids), top_probs=_frozen(self.top_probs),
            top_texts=tuple(tuple(texts.many(row) for row in layer) for layer in self.top_ids) if texts else None,
            target_probs=_frozen(self.target_probs), target_ranks=_frozen(self.target_ranks),
            entropy=_frozen(self.entropy), readout=readout.describe(), head=readout.head_name,
            norm=readout.norm_name, final_gap=gap)


class TokenTexts:
    """Token id -> display text, with the tokenizer's own token strings where it has them, cached."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def one(self, token: int) -> str:
        if token not in self.cache:
            if hasattr(self.tokenizer, "token_strings"):
                self.cache[token] = str(self.tokenizer.token_strings([token])[0])
            else:
                self.cache[token] = str(self.tokenizer.decode([token]))
        return self.cache[token]

    def many(self, ids: Sequence[int]) -> tuple[str, ...]:
        return tuple(self.one(int(i)) for i in ids)


def _frozen(rows: list) -> tuple:
    """Nested lists as nested tuples (the record is immutable)."""
    return tuple(_frozen(r) if isinstance(r, list) else r for r in rows)
