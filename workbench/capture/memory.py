"""Memory accounting: bytes saved for backward (saved-tensors hooks) and CUDA allocator deltas.

Saved bytes are attributed to the innermost recorded module call that is running when autograd
saves the tensor. A tensor is counted by its storage, once per call, so three views of one fused
QKV buffer count once. Parameter tensors are reported apart (`saved_param_bytes`): they are resident
anyway and saving them costs nothing extra (FSDP2's all-gathered weights, views of nn.Parameters, too).

`torch.cuda.memory_allocated()` builds a stats dict on every call (it costs 2.7-3.9x a forward
when called per module), so allocator deltas and peaks are read only for "layer" modules: the
traced module itself and the direct children of ModuleList/ModuleDict/Sequential containers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .records import ModuleRecord


def storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(data pointer, bytes) of the storage behind t; distinct storages give distinct keys."""
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


class SavedTensorsMeter:
    """A `saved_tensors_hooks` pair that charges each saved tensor to the current call."""

    def __init__(self, current: Callable[[], ModuleRecord | None], param_ptrs: Callable[[], set[int]]) -> None:
        self._current = current  # returns the record of the innermost running call (or None)
        self._param_ptrs_fn = param_ptrs  # called on the first save: a no-grad forward never pays for it
        self._param_ptrs: set[int] | None = None
        self._seen: dict[int, set[tuple[int, int]]] = {}  # record id -> storages already counted
        self.orphan_bytes = 0  # saved outside any recorded call
        self.all_storages: dict[tuple[int, int], bool] = {}  # every storage saved, True = parameter
        self._ctx: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = storage_key(t)
        except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some subclasses)
            return t
        if self._param_ptrs is None:
            self._param_ptrs = self._param_ptrs_fn()
        # A view of an nn.Parameter is a weight too: FSDP2 all-gathers unsharded parameters into
        # fresh storages during forward, so their pointers are not in _param_ptrs.
        is_param = key[0] in self._param_ptrs or isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)
        self.all_storages.setdefault(key, is_param)
        rec = self._current()
        if rec is None:
            if not is_param:
                self.orphan_bytes += key[1]
            return t
        seen = self._seen.setdefault(id(rec), set())
        if key not in seen:
            seen.add(key)
            if is_param:
                rec.saved_param_bytes += key[1]
            else:
                rec.saved_bytes += key[1]
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensorsMeter:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
        self._seen.clear()

    @property
    def total_activation_bytes(self) -> int:
        """Distinct non-parameter storages saved during the whole trace."""
        return sum(n for (_, n), is_param in self.all_storages.items() if not is_param)


def layer_module_names(model: nn.Module) -> set[str]:
    """Names of modules coarse enough for CUDA allocator reads: the root and container children."""
    names = {""}
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
            prefix = f"{name}." if name else ""
            names.update(prefix + child for child, _ in m.named_children())
    return names


def uses_allocator(device: torch.device) -> bool:
    """Per-layer allocator deltas and peaks exist for CUDA devices."""
    return device.type == "cuda"


def _allocated(device: torch.device) -> tuple[int, int]:
    """(current, peak) allocated bytes from one read of the allocator's nested statistics.

    `torch.cuda.memory_allocated()` and `max_memory_allocated()` each build and flatten the whole
    statistics dict; reading both numbers from one unflattened dict costs a quarter of four such calls.
    """
    stats = torch.cuda.memory_stats_as_nested_dict(device).get("allocated_bytes", {}).get("all", {})
    return int(stats.get("current", 0)), int(stats.get("peak", 0))


class CudaAllocatorMeter:
    """Allocator delta and peak per (layer-level) call, exact under nesting.

    A nested call resets the allocator's peak counter; before it does, the current peak is folded
    into every open call, so each call's peak is the max over its whole duration. One statistics read
    per enter and per exit.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._open: list[list] = []  # [record, start_bytes, peak_so_far]

    def enter(self, rec: ModuleRecord) -> None:
        now, peak = _allocated(self.device)
        for frame in self._open:
            frame[2] = max(frame[2], peak)
        torch.cuda.reset_peak_memory_stats(self.device)  # the peak restarts at `now`
        self._open.append([rec, now, now])

    def exit(self, rec: ModuleRecord) -> None:
        if not self._open or self._open[-1][0] is not rec:
            return
        now, peak = _allocated(self.device)
        frame = self._open.pop()
        for other in self._open:
            other[2] = max(other[2], peak)
        rec.cuda_peak = max(frame[2], peak)
        rec.cuda_delta = now - frame[1]
