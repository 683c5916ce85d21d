"""How a block wires its norms, attention and MLP, read from one forward's recorded values: the placement fix.

A block's parts (norms, attention, MLP) are called in some order, each on a value built from what came before:
the block's input x, an earlier part's output, or a residual sum of two or three of those. `recover` finds,
for each part of the reference, which value its recorded input equals, and which sum the block returns.
That covers pre-norm (Llama, GPT-2), post-norm (the original Transformer, BERT), the extra norms of Gemma 2/3
(a norm on each branch's output before the add) and parallel attention + MLP (GPT-J, NeoX), without naming
any of them. `compose` runs the candidate's own parts wired that way: if that closes the gap, the placement
of the candidate's norms is the mistake.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

Key = tuple[str, int, int]
MAX_TERMS = 3  # x + attention + MLP: a parallel block's output


@dataclass(frozen=True)
class Wiring:
    """Parts in call order; value 0 is the block input, value j + 1 the output of order[j]; each input and the
    output are sums of values (index tuples)."""

    order: tuple[Key, ...]
    names: tuple[str, ...]  # each part's short module name, for the formula
    inputs: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]

    @property
    def kind(self) -> str:
        """"pre" or "post" for the two classic layouts of norm, attention, norm, MLP; else "other"."""
        roles = tuple(k[0] for k in self.order)
        if roles == ("norm", "attention", "norm", "mlp") and self.inputs == ((0,), (1,), (0, 2), (3,)) \
                and self.output == (0, 2, 4):
            return "pre"
        if roles == ("attention", "norm", "mlp", "norm") and self.inputs == ((0,), (0, 1), (2,), (2, 3)) \
                and self.output == (4,):
            return "post"
        return "other"

    def formula(self) -> str:
        """The block as equations, e.g. "h1 = x + attn(ln_1(x)); out = h1 + mlp(ln_2(h1))"."""
        text = ["x"]
        lines: list[str] = []
        sums: dict[tuple[int, ...], str] = {}

        def terms(value: tuple[int, ...]) -> str:
            named = next((v for v in sorted(sums, key=len, reverse=True) if set(v) < set(value)), None)
            rest = [text[i] for i in value if named is None or i not in named]
            return " + ".join(([sums[named]] if named else []) + rest)

        def term(value: tuple[int, ...]) -> str:
            if len(value) == 1:
                return text[value[0]]
            if value not in sums:
                lines.append(f"h{len(sums) + 1} = {terms(value)}")
                sums[value] = f"h{len(sums) + 1}"
            return sums[value]

        for name, value in zip(self.names, self.inputs):
            text.append(f"{name}({term(value)})")
        lines.append(f"out = {terms(self.output)}")
        return "; ".join(lines)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-6)


def _match(target: torch.Tensor, values: list[torch.Tensor], tol: float) -> tuple[int, ...] | None:
    """The fewest values (latest first) whose sum equals target."""
    latest_first = list(range(len(values)))[::-1]
    for size in range(1, MAX_TERMS + 1):
        for combo in itertools.combinations(latest_first, size):
            if all(values[i].shape == target.shape for i in combo):
                total = sum((values[i].float() for i in combo), torch.zeros_like(target, dtype=torch.float32))
                if _close(total, target, tol):
                    return tuple(sorted(combo))
    return None


def recover(x: torch.Tensor, parts: list[tuple[Key, str, torch.Tensor, torch.Tensor]], out: torch.Tensor,
            tol: float) -> Wiring | None:
    """The wiring of a block from one call: x its input, parts (key, name, input, output) in call order, out its
    output; None when some input is not a sum of at most three earlier values."""
    values = [x]
    inputs = []
    for _, _, given, made in parts:
        found = _match(given, values, tol)
        if found is None:
            return None
        inputs.append(found)
        values.append(made)
    output = _match(out, values, tol)
    if output is None:
        return None
    return Wiring(tuple(k for k, *_ in parts), tuple(n for _, n, *_ in parts), tuple(inputs), output)


def compose(wiring: Wiring, parts: dict[Key, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor
            ) -> torch.Tensor:
    """The block computed by `parts` (each called on its main input) wired as `wiring`."""
    values = [x]
    for key, value in zip(wiring.order, wiring.inputs):
        values.append(parts[key](_sum(values, value)))
    return _sum(values, wiring.output)


def _sum(values: list[torch.Tensor], which: tuple[int, ...]) -> torch.Tensor:
    total = values[which[0]]
    for i in which[1:]:
        total = total + values[i].to(total.device, total.dtype)
    return total
