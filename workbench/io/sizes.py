"""Checking a config's declared sizes against a weight file's tensor table, before a layer is built.

A config that claims a million layers, or a vocabulary of 10^12 rows, must be refused from the
file's header alone: building the model first would hang or exhaust memory. The expected shapes come
from a one-block model on the meta device (no memory), repeated for every block, and are renamed to
the file's naming by the family that wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..errors import WeightMismatchError
from ..families.naming import Naming
from ..model.config import ModelConfig

Shapes = dict[str, tuple[int, ...]]
_SLACK_ELEMENTS = 2**24  # non-strict loads may leave this many elements beyond the file at their initial values


def expected_shapes(config: ModelConfig) -> Shapes:
    """Workbench tensor name -> shape for `config`, without allocating (the tied LM head left out)."""
    from ..model.transformer import TransformerLM

    try:
        with torch.device("meta"):
            one = TransformerLM(config.replace(n_layers=1), init=False)  # shapes only
    except (RuntimeError, OverflowError, ValueError) as exc:  # sizes whose byte count overflows int64
        raise WeightMismatchError(
            f"the config's sizes (d_model={config.d_model}, vocab_size={config.vocab_size}, d_ff={config.d_ff}) "
            f"describe tensors too large to exist ({exc}); fix them to match the weights."
        ) from None
    shapes: Shapes = {}
    for name, tensor in one.state_dict().items():
        if name.startswith("blocks.0."):
            rest = name.removeprefix("blocks.0.")
            shapes.update({f"blocks.{i}.{rest}": tuple(tensor.shape) for i in range(config.n_layers)})
        elif not (config.tie_embeddings and name == "lm_head.weight"):
            shapes[name] = tuple(tensor.shape)
    return shapes


def _foreign(shapes: Shapes, config: ModelConfig, naming: Naming | None) -> tuple[Shapes, dict[str, str]]:
    """`shapes` renamed as the file names its tensors (fused projections split, Conv1D transposed),
    and the workbench name of each foreign name."""
    if naming is None:
        return shapes, {name: name for name in shapes}
    out: Shapes = {}
    ours: dict[str, str] = {}
    for name, shape in shapes.items():
        for theirs, t in naming.from_workbench({name: torch.empty(shape, device="meta")}, config).items():
            out[theirs], ours[theirs] = tuple(t.shape), name
    return out, ours


def _blocks_in(names: list[str], naming: Naming | None) -> int:
    """How many blocks the file's tensor names reach (highest block number + 1)."""
    if naming is None:
        found = [int(n.split(".")[1]) for n in names if n.startswith("blocks.") and n.split(".")[1].isdigit()]
    else:
        found = [i for i in map(naming.block_index, names) if i is not None]
    return max(found, default=-1) + 1


def check_sizes(
    config: ModelConfig,
    file_shapes: Mapping[str, tuple[int, ...]],
    naming: Naming | None,
    *,
    source: str,
    declared: str,
    strict: bool = True,
) -> None:
    """Raise WeightMismatchError when `config` does not fit the tensors listed in a file's header.

    file_shapes: tensor name -> shape in the file's own naming; naming: the family's naming for the
    file (None: workbench names); declared: where the config came from, for the message.
    The block count must not exceed the file's. With strict=True every expected tensor must be in the
    file with its shape; otherwise the model may not be much larger than the file.
    """
    blocks = _blocks_in(list(file_shapes), naming)
    if config.n_layers > blocks:
        raise WeightMismatchError(
            f"{declared} declares {config.n_layers} layers but {source} holds tensors for {blocks} blocks; "
            "the metadata is corrupt or belongs to another checkpoint. Fix the layer count or re-download."
        )
    expected, ours = _foreign(expected_shapes(config), config, naming)
    prefix = naming.prefix if naming is not None else ""
    by_name = {**{k.removeprefix(prefix): v for k, v in file_shapes.items()}, **file_shapes}
    missing = [k for k in expected if k not in by_name and k.removeprefix(prefix) not in by_name]
    mismatched = [
        (k, by_name.get(k, by_name.get(k.removeprefix(prefix))), v)
        for k, v in expected.items()
        if k not in missing and by_name.get(k, by_name.get(k.removeprefix(prefix))) != v
    ]
    if strict and (missing or mismatched):
        def named(k: str) -> str:
            return k if ours[k] == k else f"{k} ({ours[k]})"

        shown = [f"{named(k)}: file {list(a or ())} vs config {list(b)}" for k, a, b in mismatched[:3]]
        shown += [f"{named(k)}: not in file" for k in missing[: max(0, 3 - len(shown))]]
        raise WeightMismatchError(
            f"{len(missing)} missing and {len(mismatched)} mismatched weights: {declared} does not fit the "
            f"tensors in {source} ({'; '.join(shown)}). The config and the weights belong to different "
            "models; fix the config, or pass strict=False to load what fits."
        )
    wanted = sum(math.prod(s) for s in expected.values())
    held = sum(math.prod(s) for s in file_shapes.values())
    if wanted > 2 * held + _SLACK_ELEMENTS:
        raise WeightMismatchError(
            f"{declared} describes a model of {wanted:,} weights but {source} holds {held:,}; the sizes in the "
            "config are wrong. Fix them before loading."
        )
