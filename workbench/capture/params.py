"""Static per-module parameter facts a trace stamps on every record, cached across traces.

They are computed once per model and reused while its module tree and parameters are unchanged
(`layout.model_layout`).
"""

from __future__ import annotations

from torch import nn

# Values in ModuleRecord field order (params, params_own, params_counted, trainable_params,
# param_bytes): the capture hot path passes them positionally.
ParamInfo = tuple[int, int, int, int, int]


def parameters_of(named: list[tuple[str, nn.Module]]) -> list[nn.Parameter]:
    """model.parameters() from a named_modules() list, without walking the tree again."""
    seen: set[int] = set()
    out = []
    for _, m in named:
        for p in m._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def module_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Module path -> its parameters incl. children, each once (a tied parameter appears under
    every module that holds it, but once per module). One pass over parameter names."""
    members: dict[str, dict[int, nn.Parameter]] = {name: {} for name, _ in model.named_modules()}
    for pname, p in model.named_parameters(remove_duplicate=False):
        parts = pname.split(".")[:-1]
        for i in range(len(parts) + 1):
            members[".".join(parts[:i])][id(p)] = p
    return {name: list(ps.values()) for name, ps in members.items()}


def static_param_info(model: nn.Module, members: dict[str, list[nn.Parameter]]) -> dict[str, ParamInfo]:
    """Per-module parameter counts, bytes and trainable counts, tied parameters counted once."""
    owner: set[int] = set()
    info = {}
    for name, m in model.named_modules():
        uniq = members[name]
        own = list(m.parameters(recurse=False))
        counted = sum(p.numel() for p in own if id(p) not in owner)
        owner.update(id(p) for p in own)
        info[name] = (
            sum(p.numel() for p in uniq),  # params
            sum(p.numel() for p in own),  # params_own
            counted,  # params_counted
            sum(p.numel() for p in uniq if p.requires_grad),  # trainable_params
            sum(p.numel() * p.element_size() for p in uniq),  # param_bytes
        )
    return info
