"""Every error the workbench raises on bad input derives from `WorkbenchError`.

Each message names the problem and the fix, so a notebook user never has to read a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class for every error the workbench raises on purpose."""


class ConfigError(WorkbenchError, ValueError):
    """A model configuration is inconsistent (sizes, divisibility, unknown variants)."""


class InputError(WorkbenchError, ValueError):
    """A model input is malformed: ids out of range, wrong dtype, bad mask, too long."""


class OutputPathError(WorkbenchError, ValueError):
    """A file the workbench was asked to write cannot be written at that path (a directory there, a file where
    a folder should be, no permission, a full disk)."""


class LoadError(WorkbenchError):
    """Weights or a tokenizer could not be loaded."""


class CorruptFileError(LoadError):
    """A weight file is truncated or malformed."""


class UnsafeFormatError(LoadError):
    """A pickle-based weight file was refused because loading it could execute code."""


class WeightMismatchError(LoadError):
    """Loaded weights do not fit the model (missing keys or shape mismatches under strict=True)."""


class MissingDependencyError(WorkbenchError, ImportError):
    """An optional package that a feature needs is not installed."""


class GenerationError(WorkbenchError, ValueError):
    """Generation arguments are invalid."""


class CaptureError(WorkbenchError):
    """A trace could not be set up or read back."""


class UnsupportedModelError(LoadError):
    """A file holds a model architecture or tokenizer type that the workbench cannot build."""


class ModelContractError(WorkbenchError, ValueError):
    """A model does not meet the calling contract a feature needs (its forward's arguments, outputs or cache)."""


class DoctorError(WorkbenchError, ValueError):
    """`diagnose` got an unknown check name or a model whose forward it cannot drive."""


class CompareError(WorkbenchError, ValueError):
    """`compare` got models or inputs it cannot line up (no block list, different vocabularies, bad inputs).

    `partial` holds what was measured before the problem (a `workbench.compare.PartialComparison`: the weight
    table, the cases run so far), or None when nothing was."""

    def __init__(self, message: str, partial: object = None) -> None:
        super().__init__(message)
        self.partial = partial


class DisplayError(WorkbenchError, TypeError):
    """A view was registered for something that is not a type, or an export has no view registered."""


class InterventionError(WorkbenchError, ValueError):
    """An edit, an ablation, a patch or a lens that cannot apply as asked (a module, head or position that
    does not exist, a replacement of the wrong shape, a metric that is not a scalar)."""


class RunFileError(WorkbenchError):
    """A run file cannot be opened or read as one: not a run file, from a newer workbench, closed, or damaged
    beyond what can be recovered."""


class RecorderError(WorkbenchError, ValueError):
    """A run recorder was given something it cannot record: a model that is not a module, a bad cadence, a
    trigger predicate that raised, or a step after `close()`."""
