"""The check registry and the context every check receives.

A check is a function `fn(ctx) -> Result`; `@check(name, pitfall, fix)` registers it. Checks detect
bugs by running probes on the model and measuring behaviour, never by recognising a class or a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..errors import DoctorError
from ..lm import ModelAdapter


class Precondition(DoctorError):
    """A check cannot judge this model because another check's problem hides its signal."""


class TooShort(Precondition):
    """A check's probe is longer than the context the model declares: the check cannot run, it says n/a."""


class Result(NamedTuple):
    status: str  # "pass", "warn", "fail", "n/a"
    summary: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Check:
    name: str
    order: int  # its place in the pitfall catalogue: reports list checks by it
    pitfall: str  # the implementation mistake it detects
    fix: str  # what to change when it does not pass
    fn: Callable[[Context], Result]


CHECKS: dict[str, Check] = {}


def check(name: str, *, order: int, pitfall: str,
          fix: str) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register `fn` as the check `name`, at place `order` of the catalogue.

    Every check declares its place, so none can be left out of a report by a list kept elsewhere; a
    name or a place used twice is an error when the module defining it is imported.
    """
    if name in CHECKS:
        raise DoctorError(f"a doctor check named {name!r} is already registered.")
    taken = {c.order: c.name for c in CHECKS.values()}
    if not isinstance(order, int) or order in taken:
        raise DoctorError(f"check {name!r} needs an integer catalogue place of its own; order={order!r} is "
                          f"{'taken by ' + repr(taken[order]) if order in taken else 'not an integer'}.")

    def register(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
        CHECKS[name] = Check(name, order, pitfall, fix, fn)
        return fn

    return register


def unregister(name: str) -> Check:
    """Remove a registered check (a plug-in's or a test's, when it is done); returns it."""
    if name not in CHECKS:
        raise DoctorError(f"no doctor check named {name!r} is registered; registered checks are {list(catalogue())}.")
    return CHECKS.pop(name)


def catalogue() -> tuple[str, ...]:
    """The names of every registered check, in catalogue order, as the registry holds them now."""
    return tuple(sorted(CHECKS, key=lambda n: CHECKS[n].order))


@dataclass
class Context:
    """What a check may use: the adapter, the seed, and a cache of values shared between checks."""

    adapter: ModelAdapter
    seed: int = 0
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.adapter.model

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from `seed` and `salt`, so every probe is reproducible on its own."""
        return torch.Generator().manual_seed(self.seed * 1009 + salt)

    def ids(self, batch: int, length: int, salt: int = 0) -> torch.Tensor:
        """Random probe ids (batch, length); a probe longer than the model's context is refused (`need`)."""
        self.need(length)
        return self.adapter.probe_ids(self.generator(salt), batch, length)

    def need(self, length: int) -> None:
        """Refuse (n/a) a check whose probe holds `length` positions when the model declares a shorter context
        (config max_seq_len, max_position_embeddings, n_positions, block_size or n_ctx)."""
        limit = self.adapter.max_len
        if limit is not None and length > limit:
            raise TooShort(f"this check's probe needs {length} positions, but the model's context is {limit} "
                           "(its config's max_seq_len / max_position_embeddings / n_positions / block_size); "
                           "it cannot be judged on so short a context.")

    def require_deterministic(self) -> None:
        """Checks that compare two forwards need the model to be a function of its input: a model that
        draws random numbers in eval mode is reported by `determinism`, and these checks step aside."""
        if "random" not in self.shared:
            a = self.adapter
            ids = self.ids(1, 8, salt=99)
            devices = [a.device.index or 0] if a.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                first = a.logits(ids, allow_nonfinite=True)
                torch.manual_seed(self.seed + 1)
                second = a.logits(ids, allow_nonfinite=True)
            self.shared["random"] = not bool(torch.equal(first, second)) and bool(torch.isfinite(first).all())
        if self.shared["random"]:
            raise Precondition("the model's eval-mode output changes from run to run, so comparing two "
                               "forwards says nothing; see the `determinism` check.")


def na(reason: str, **evidence: Any) -> Result:
    return Result("n/a", reason, evidence)


def max_delta(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Largest |a - b| and the time position (dim 1) where it occurs; a, b (B, T, V)."""
    diff = (a.float() - b.float()).abs()
    per_t = diff.amax(dim=(0, 2)) if diff.dim() == 3 else diff.reshape(1, -1).amax(dim=0)
    pos = int(per_t.argmax())
    return float(per_t[pos]), pos
