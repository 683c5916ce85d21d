"""`compile_model`: an optional `torch.compile`d forward that never breaks the user's run.

Compilation is opt-in (it costs tens of seconds up front and pays off on a GPU, rarely on the CPU).
The compiled forward is used only while nothing listens: with a hook or a workbench trace
attached it runs the eager forward, so hooks always fire. Calls with a KV cache run eagerly too
(each new cache length would recompile); cached decoding has its own fixed-shape fast path in
`workbench.model.fast`. Inputs are validated eagerly, outside the compiled region, so the
compiled graph has no data-dependent break. If `torch.compile` is missing or fails
(no C++ compiler, unsupported platform, a Dynamo error), one warning names the reason and every
later call runs the eager forward.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ConfigError, WorkbenchError
from .decoder import supports_fast_decode
from .fast import hook_tables, hooks_attached
from .inputs import check_inputs

if TYPE_CHECKING:
    from .transformer import TransformerLM


class CompiledModel:
    """Calls `model` through `torch.compile` when it can, eagerly when it must.

    Attribute access other than the call goes to the wrapped model (`config`, `new_cache`,
    `eval`, `parameters`...), so it can stand in for the model in `generate`. Trace or hook the
    wrapped `.model`; while you do, calls run eagerly.
    """

    def __init__(self, model: TransformerLM, compiled: Any, error: BaseException | None = None) -> None:
        self.model, self._compiled = model, compiled
        self._tables = hook_tables(model)
        self.error: BaseException | None = error  # why compilation was given up, if it was
        self.compiled_calls = 0  # calls that ran the compiled forward
        self.last_route = "eager"

    @property
    def compiled(self) -> bool:
        """True while the compiled forward is in use (False after a fallback)."""
        return self._compiled is not None

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        *,
        validate: bool = True,
    ) -> torch.Tensor:
        """Logits (B, T, V), as `TransformerLM.forward` returns them."""
        if self._compiled is None or cache is not None or hooks_attached(self.model, self._tables):
            self.last_route = "eager"
            return self.model(input_ids, attention_mask, position_ids, cache, validate=validate)
        if validate:  # eagerly: its host sync would otherwise break the graph
            attention_mask = check_inputs(
                self.model.config, input_ids, attention_mask, position_ids, None, self.model.embed.weight.device
            )
        try:
            out = self._compiled(input_ids, attention_mask, position_ids)
        except WorkbenchError:
            raise  # bad input is the user's to fix, not a compiler failure
        except Exception as err:  # any compiler failure must fall back, never crash
            self._give_up(err)
            self.last_route = "eager"
            return self.model(input_ids, attention_mask, position_ids, validate=False)
        self.compiled_calls += 1
        self.last_route = "compiled"
        return out

    def _give_up(self, err: BaseException) -> None:
        self._compiled, self.error = None, err
        warnings.warn(
            f"workbench: torch.compile failed ({type(err).__name__}: {_first_line(err)}); "
            "running the eager forward instead.",
            RuntimeWarning,
            stacklevel=3,
        )

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "_compiled", "_tables"):  # not set yet: avoid recursing during __init__
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        state = "compiled" if self.compiled else f"eager fallback ({type(self.error).__name__})"
        return f"CompiledModel({type(self.model).__name__}, {state}, compiled_calls={self.compiled_calls})"


def compile_model(
    model: nn.Module, *, mode: str | None = None, backend: str = "inductor", dynamic: bool | None = None
) -> CompiledModel:
    """Wrap a `TransformerLM` so its forward runs through `torch.compile(mode=, backend=, dynamic=)`;
    never raises for a compiler problem. mode: e.g. "reduce-overhead" (CUDA graphs inside) or "max-autotune" on a GPU.

    Compilation happens lazily, at the first call of each new input shape; a failure there warns
    once and switches this wrapper to the eager forward for good.
    """
    if not supports_fast_decode(model):
        raise ConfigError(
            f"compile_model wraps a workbench TransformerLM, got {type(model).__name__}; "
            "call torch.compile on other modules directly."
        )

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None):
        return model(input_ids, attention_mask, position_ids, validate=False)  # (B, T, V)

    try:
        compiled = torch.compile(forward, mode=mode, backend=backend, dynamic=dynamic)
    except Exception as err:  # e.g. unsupported Python or platform, missing backend
        wrapper = CompiledModel(model, None, err)
        wrapper._give_up(err)
        return wrapper
    return CompiledModel(model, compiled)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"
