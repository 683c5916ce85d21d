"""`GraphedDecodeStep`: one CUDA graph of `decode_step` per (batch, max_len) and set of cache buffers.

An eager decode step of a 135M model is ~1,100 small kernels; at batch 1 the GPU finishes each long
before Python launches the next, so launch overhead, not arithmetic, sets the token rate. Replaying a
captured graph launches them all at once. Capture records the addresses of every tensor the step
touches: the cache buffers (held by `StaticSlots`), the static token and write-position inputs, and
the output logits, and the weights. `FastDecoder` recaptures when the cache reallocates or a weight
tensor is replaced (in-place edits such as `weight.mul_(0)` are seen by the graph; `p.data = ...`
or `load_state_dict(assign=True)` are not, so they are checked), and never replays while hooks
listen, because a replay runs the recorded kernels without calling any Python.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .fast import StaticSlots, decode_step

WARMUP_STEPS = 3  # eager runs on a side stream before capture (lazy init, cuBLAS workspaces, autotune)


class GraphedDecodeStep:
    """A captured `decode_step` (or `step`, e.g. a `fast.CompiledStep`); `replay(token, length)`
    returns logits (B, 1, V) as a fresh tensor.

    start: a free slot (the cache's current length). Warm-up writes throwaway keys there; the first
    real step overwrites them, and the key mask there is True already, so nothing visible changes.
    """

    def __init__(self, model: nn.Module, slots: StaticSlots, *, start: int, step: Callable = decode_step) -> None:
        device = slots.key_mask.device
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, the cache is on {device}.")
        self.slots = slots
        self._weights = _weight_slots(model)
        self.token = torch.zeros(slots.batch_size, 1, dtype=torch.long, device=device)  # (B, 1) static input
        slots.write_pos.fill_(start)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(WARMUP_STEPS):
                step(model, self.token, slots)  # a compiled step compiles here, before capture
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = step(model, self.token, slots)  # (B, 1, V) static output

    def current(self) -> bool:
        """False once any parameter or buffer was replaced: the graph would read the old storage."""
        return all(table.get(name) is t and t.data_ptr() == ptr for table, name, t, ptr in self._weights)

    def replay(self, token: torch.Tensor, length: int) -> torch.Tensor:
        """Run the graph for `token` (B, 1) written at slot `length`; logits (B, 1, V), safe to keep."""
        self.token.copy_(token)
        self.slots.write_pos.fill_(length)
        self.graph.replay()
        return self.logits.clone()  # the next replay overwrites the static output


def _weight_slots(model: nn.Module) -> list[tuple[dict, str, torch.Tensor, int]]:
    """(owning dict, name, tensor, address) for every parameter and buffer the graph reads."""
    out: list[tuple[dict, str, torch.Tensor, int]] = []
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            out.extend((table, name, t, t.data_ptr()) for name, t in table.items() if t is not None)
    return out
