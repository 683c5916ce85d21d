"""The catalogue of planted port mistakes: one entry per mistake, in three port styles, checked by `compare`.

Each style module (`catalogue_hf.py`, `catalogue_nanogpt.py`, `catalogue_gptfast.py`) writes its own port of an
HF reference in that style, with one switch per planted mistake (`None` is the clean port), and lists its
entries as `MISTAKES`. For every entry the catalogue asserts three facts:
- found: the first divergence is at the expected point;
- named: the diagnosis names the expected fix;
- fixed: that fix closes the gap to float noise (its error is at or under the comparison's tolerance).
A clean port of each style gives no divergence and no cause.

`benchmarks/compare_catalogue.py` prints the same checks as the table in RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from workbench.compare import Comparison, compare


@dataclass(frozen=True)
class Mistake:
    """One planted mistake: the port built with `bug`, and what `compare` must say about it."""

    style: str  # "HF-like", "nanoGPT-like", "gpt-fast-like"
    bug: str  # the port's switch
    what: str  # the mistake in a few words, as the RESULTS table shows it
    point: str  # the expected first divergence's label ("block 0 attention")
    fix: str  # the expected cause's fix name (`Trial.name`)
    reference: Callable[[], nn.Module] = field(repr=False)  # cached by the style module: built once
    port: Callable[[nn.Module, str | None], nn.Module] = field(repr=False)
    case: str | None = None  # the case the divergence shows in, when it matters ("cached", "padded")


@dataclass(frozen=True)
class Outcome:
    mistake: Mistake
    comparison: Comparison = field(repr=False)

    @property
    def found(self) -> bool:
        d = self.comparison.first_divergence
        return d is not None and d.label == self.mistake.point and (
            self.mistake.case is None or d.case == self.mistake.case)

    @property
    def named(self) -> bool:
        d = self.comparison.diagnosis
        return d is not None and d.cause is not None and d.cause.name == self.mistake.fix

    @property
    def fixed(self) -> bool:
        d = self.comparison.diagnosis
        return self.named and d is not None and d.cause is not None and d.cause.error <= d.tolerance


def assert_found_named_fixed(outcome: Outcome) -> None:
    """The three facts the catalogue asserts of a mistake, with compare's summary as the message."""
    summary = outcome.comparison.summary()
    assert outcome.found, f"first divergence not at {outcome.mistake.point!r}:\n{summary}"
    assert outcome.named, f"cause not named {outcome.mistake.fix!r}:\n{summary}"
    assert outcome.fixed, f"the fix leaves the gap above noise:\n{summary}"


def check(mistake: Mistake) -> Outcome:
    """`compare` on the port with the mistake planted."""
    reference = mistake.reference()
    with torch.no_grad():
        port = mistake.port(reference, mistake.bug)
    return Outcome(mistake, compare(reference, port))


def clean(reference: nn.Module, port: Callable[[nn.Module, str | None], nn.Module]) -> Comparison:
    """`compare` on the clean port of a style."""
    with torch.no_grad():
        candidate = port(reference, None)
    return compare(reference, candidate)
