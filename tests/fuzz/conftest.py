"""The fuzz suite's contract: every case ends in a WorkbenchError or a correct result, within a time limit.

`contract()` is the one check every fuzz case runs inside; `FUZZ` is the shared hypothesis setting
(seeded, bounded, with a per-example deadline) so the whole suite stays within its CI budget.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

from workbench.errors import WorkbenchError

# Seeded, no example database, a deadline per example; examples are set per test with `FUZZ(n)`.
_BASE = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def FUZZ(max_examples: int) -> settings:  # noqa: N802 (reads as a decorator constant)
    """The suite's hypothesis settings with `max_examples` examples."""
    return settings(_BASE, max_examples=max_examples)


class CaseTimeout(BaseException):
    """Raised inside a case that ran past its time limit (a BaseException, so no `except Exception` eats it)."""


@dataclass
class Outcome:
    """What a case ended in: the WorkbenchError it raised, or None when it returned a result."""

    error: WorkbenchError | None = None


@contextlib.contextmanager
def contract(seconds: int = 10) -> Iterator[Outcome]:
    """Run a fuzz case: a WorkbenchError is recorded in the outcome, anything else fails the test.

    Fails on any other exception (a raw crash) and on running past `seconds` (a hang); the caller then
    checks that a case without an error produced a correct result. Uses SIGALRM (main thread, POSIX).
    """

    def _expired(signum: int, frame: object) -> None:
        raise CaseTimeout(f"the case ran past {seconds} s")

    outcome = Outcome()
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield outcome
    except WorkbenchError as exc:
        outcome.error = exc
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
    except CaseTimeout as exc:
        pytest.fail(f"hang: {exc}")
    except Exception as exc:  # noqa: BLE001 (the point: any other exception is a finding)
        pytest.fail(f"raw {type(exc).__name__} instead of a WorkbenchError: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
