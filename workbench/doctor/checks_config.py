"""Structural checks: config validity, weight loading and tying, input validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..lm import config_value
from ..lm.intercept import Client, ModuleCall, intercept
from .registry import Context, Result, check, na


def _fields(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    to_dict = getattr(cfg, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


def _known_enums(fields: dict[str, Any]) -> list[tuple[str, Any, tuple]]:
    """(field, value, allowed) for enum-like fields whose allowed values the workbench knows."""
    from ..model import config as wb

    out = [(n, fields[n], allowed) for n, allowed in (("positions", wb.POSITIONS), ("norm", wb.NORMS),
           ("norm_placement", wb.PLACEMENTS), ("mlp", wb.MLPS)) if n in fields]
    act = fields.get("hidden_act", fields.get("activation_function"))
    if isinstance(act, str):
        try:
            from transformers.activations import ACT2FN
        except ImportError:
            return out
        out.append(("activation", act, tuple(ACT2FN)))
    return out


def _tokenizer_vocab(tokenizer: Any) -> int | None:
    for attr in ("vocab_size", "get_vocab_size"):
        value = getattr(tokenizer, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, int):
            try:
                return max(value, len(tokenizer))  # HF: len() includes added special tokens
            except TypeError:
                return value
    return None


@check(
    "config",
    order=10,
    pitfall="Inconsistent hyperparameters: d_model not divisible by n_heads (head_dim silently floors), "
    "query heads not a multiple of KV heads, vocab_size that disagrees with the embedding or tokenizer, "
    "out-of-range dropout/eps, unknown enum values.",
    fix="Make d_model = n_heads * head_dim, n_heads a multiple of n_kv_heads, vocab_size >= the tokenizer's "
    "vocabulary and equal to the embedding rows; validate the config in __post_init__.",
)
def config_check(ctx: Context) -> Result:
    a = ctx.adapter
    fields = _fields(a.config)
    problems: list[str] = []
    d = config_value(fields, "d_model", "hidden_size", "n_embd", "dim")
    h = config_value(fields, "n_heads", "num_attention_heads", "n_head")
    kv = config_value(fields, "n_kv_heads", "num_key_value_heads")
    head_dim = config_value(fields, "head_dim", "attn_head_dim")
    layers = config_value(fields, "n_layers", "num_hidden_layers", "n_layer")
    V = config_value(fields, "vocab_size")
    evidence: dict[str, Any] = {k: v for k, v in (("d_model", d), ("n_heads", h), ("n_kv_heads", kv),
                                                  ("n_layers", layers), ("vocab_size", V)) if v is not None}
    for name, value in evidence.items():
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{name}={value!r} is not a positive integer")
    if isinstance(d, int) and isinstance(h, int) and h > 0 and head_dim is None and d % h:
        problems.append(f"d_model={d} is not divisible by n_heads={h} (head_dim floors to {d // h}, "
                        f"{d - h * (d // h)} channels unused)")
    if isinstance(h, int) and isinstance(kv, int) and kv > 0 and h % kv:
        problems.append(f"n_heads={h} is not a multiple of n_kv_heads={kv}")
    logits_V = a.vocab_size
    evidence["logits_width"] = logits_V
    if isinstance(V, int) and V != logits_V:
        problems.append(f"vocab_size={V} but the logits have {logits_V} columns")
    emb = a.input_embedding()
    if isinstance(emb, nn.Embedding):
        evidence["embedding_rows"] = emb.num_embeddings
        if emb.num_embeddings != logits_V:
            problems.append(f"the embedding has {emb.num_embeddings} rows but the logits {logits_V} columns")
    tok_V = _tokenizer_vocab(ctx.adapter.tokenizer) if ctx.adapter.tokenizer is not None else None
    if tok_V is not None:
        evidence["tokenizer_vocab"] = tok_V
        if tok_V > logits_V:
            problems.append(f"the tokenizer has {tok_V} tokens but the model only {logits_V}")
    blocks = a.blocks()
    if isinstance(layers, int) and blocks is not None and len(blocks[1]) != layers:
        problems.append(f"n_layers={layers} but the model has {len(blocks[1])} blocks in {blocks[0]}")
    for name, value in fields.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if ("dropout" in name or name.endswith("pdrop")) and not 0 <= value < 1:
            problems.append(f"{name}={value} is outside [0, 1)")
        if name.endswith(("eps", "epsilon")) and not value > 0:
            problems.append(f"{name}={value} must be > 0")
    for name, value, allowed in _known_enums(fields):
        if value not in allowed:
            problems.append(f"{name}={value!r} is not one of {sorted(allowed)[:8]}")
    if not fields and "embedding_rows" not in evidence and tok_V is None:
        return na("the model has no `.config` and no embedding to compare sizes with.", **evidence)
    evidence["problems"] = len(problems)
    if problems:
        return Result("fail", "; ".join(problems) + ".", evidence)
    return Result("pass", "sizes divide evenly and agree with the embedding, logits and tokenizer.", evidence)


def _storage(p: torch.Tensor) -> int:
    return p.untyped_storage().data_ptr()


@check(
    "weights",
    order=120,
    pitfall="Weights loaded with missing/unexpected keys or shape mismatches, non-finite or meta parameters, "
    "and a 'tied' output head that is a copy of the embedding instead of sharing its storage.",
    fix="Load with a strict key check and read the load report; tie with `lm_head.weight = embed.weight` "
    "(the same Parameter), not `.clone()` or `nn.Parameter(embed.weight.data)`.",
)
def weights(ctx: Context) -> Result:
    a = ctx.adapter
    evidence: dict[str, Any] = {}
    problems, warnings = [], []
    report = getattr(ctx.model, "load_report", None)
    if report is not None and hasattr(report, "missing"):
        evidence.update(missing=len(report.missing), unexpected=len(report.unexpected),
                        mismatched=len(getattr(report, "mismatched", [])))
        if report.missing or evidence["mismatched"]:
            problems.append(f"the load report lists {evidence['missing']} missing and {evidence['mismatched']} "
                            "shape-mismatched keys")
        if report.unexpected:
            warnings.append(f"{len(report.unexpected)} unexpected keys in the file were ignored")
    bad = [n for n, p in ctx.model.named_parameters() if p.is_meta or not bool(torch.isfinite(p).all())]
    evidence["nonfinite_or_meta_params"] = len(bad)
    if bad:
        evidence["first_bad_param"] = bad[0]
        problems.append(f"{len(bad)} parameters are non-finite or on the meta device (first: {bad[0]})")
    claimed = config_value(a.config, "tie_embeddings", "tie_word_embeddings")
    emb, head = a.input_embedding(), a.output_head()  # the token embedding, found by what it looks up
    ew, hw = getattr(emb, "weight", None), getattr(head, "weight", None)
    if isinstance(ew, torch.Tensor) and isinstance(hw, torch.Tensor) and ew.shape == hw.shape:
        names = {id(m): n for n, m in ctx.model.named_modules()}
        e_name, h_name = names.get(id(emb), "the embedding"), names.get(id(head), "the head")
        shared = _storage(ew) == _storage(hw) and ew.data_ptr() == hw.data_ptr()
        copies = (not shared) and bool(torch.equal(ew, hw))
        evidence.update(tie_claimed=claimed, head_shares_embedding_storage=shared, head_equals_embedding=copies,
                        embedding=e_name, head=h_name)
        if not shared and (claimed or copies):
            kind = "an identical copy" if copies else "a separate tensor"
            said = " although the config says the embeddings are tied" if claimed else ""
            problems.append(f"{h_name}.weight is {kind} of {e_name}.weight, not the same Parameter{said}: the two "
                            "drift apart from the first optimizer step")
        elif shared and claimed is False:
            warnings.append(f"the config says untied but {h_name}.weight shares {e_name}.weight's storage")
    if problems:
        return Result("fail", "; ".join(problems) + ".", evidence)
    if warnings:
        return Result("warn", "; ".join(warnings) + ".", evidence)
    if not evidence or evidence == {"nonfinite_or_meta_params": 0}:
        return Result("pass", "all parameters finite; no load report or tied head to check.", evidence)
    return Result("pass", "parameters finite, load report clean, tying consistent with the config.", evidence)


class _Reached(Exception):
    """Raised by a probe hook: the input got this far without the model complaining."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


class Tripwires(Client):
    """An observer that stops the forward (`_Reached`) at an embedding lookup of ids outside the table, or when
    the input reaches `stop_at` (the first block, else the output head)."""

    def __init__(self, model: nn.Module, stop_at: nn.Module | None) -> None:
        named = list(model.named_modules())
        self.embeddings = {n for n, m in named if isinstance(m, nn.Embedding)}
        self.stop = next((n for n, m in named if m is stop_at), None)
        self.modules = (*self.embeddings, *([self.stop] if self.stop is not None else []))

    def module_input(self, call: ModuleCall) -> None:
        module = call.module
        if call.name in self.embeddings and isinstance(module, nn.Embedding):
            idx = call.args[0] if call.args else None
            if isinstance(idx, torch.Tensor) and idx.numel() and not idx.is_floating_point():
                if bool((idx < 0).any()) or bool((idx >= module.num_embeddings).any()):
                    raise _Reached(f"embedding lookup with ids outside [0, {module.num_embeddings})")
        if call.name == self.stop:
            raise _Reached("the first block")


def _probe(ctx: Context, ids: torch.Tensor) -> tuple[str, str]:
    """Run a bad input with tripwires; returns (outcome, detail).

    outcome: "raised" (ValueError/TypeError from the model: explicit validation), "lowlevel" (IndexError /
    RuntimeError, or the ids would reach an embedding lookup out of range: on CUDA a device-side
    assert), "silent" (the input reached the first block unchanged, with no complaint).
    """
    blocks = ctx.adapter.blocks()
    stop_at = blocks[1][0][1] if blocks else ctx.adapter.output_head()
    try:
        with torch.no_grad(), intercept(ctx.model, Tripwires(ctx.model, stop_at)):
            ctx.adapter.logits(ids, allow_nonfinite=True)
    except _Reached as reached:
        return ("lowlevel" if "embedding" in reached.where else "silent"), reached.where
    except (ValueError, TypeError) as err:
        return "raised", f"{type(err).__name__}: {err}"[:160]
    except (IndexError, RuntimeError) as err:
        return "lowlevel", f"{type(err).__name__}: {err}"[:160]
    return "silent", "the forward returned logits"


@check(
    "input_validation",
    order=150,
    pitfall="Out-of-range token ids or over-long inputs are not checked, so they crash inside an embedding "
    "(a device-side assert on CUDA) or, worse, silently produce garbage.",
    fix="Check 0 <= id < vocab_size and T <= max_seq_len at the top of forward and raise a ValueError that "
    "says which limit was broken.",
)
def input_validation(ctx: Context) -> Result:
    a = ctx.adapter
    V = a.vocab_size
    good = ctx.ids(1, 4, salt=8)
    probes = {"id_equal_to_vocab": good.clone().index_fill_(1, torch.tensor([2], device=a.device), V),
              "negative_id": good.clone().index_fill_(1, torch.tensor([1], device=a.device), -1)}
    limit = a.max_len
    if limit is not None and limit < 65536:
        probes["one_token_too_long"] = a.probe_ids(ctx.generator(9), 1, limit + 1)  # past the context on purpose
    outcomes = {name: _probe(ctx, ids) for name, ids in probes.items()}
    evidence: dict[str, Any] = {name: kind for name, (kind, _) in outcomes.items()}
    evidence["vocab_size"] = V
    if limit is not None:
        evidence["max_len"] = limit
    silent_ids = [n for n in ("id_equal_to_vocab", "negative_id") if outcomes[n][0] == "silent"]
    if silent_ids:
        return Result("fail", f"{', '.join(silent_ids)}: the bad ids ran through the model without an error "
                      "(silent garbage).", evidence)
    weak = [n for n, (kind, _) in outcomes.items() if kind != "raised"]
    if weak:
        detail = "; ".join(f"{n}: {outcomes[n][1]}" for n in weak)
        return Result("warn", f"not validated up front ({detail}).", evidence)
    note = "" if limit is not None else " (no max length declared, so over-long inputs were not probed)"
    return Result("pass", "bad ids and over-long inputs raise a clear error before any layer runs" + note + ".",
                  evidence)
