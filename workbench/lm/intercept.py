"""The interception layer: one scoped context in which clients observe and edit a model's forward.

`intercept(model, *clients)` is the one way the workbench watches or changes what a model computes. Inside it,
each client sees the events it asks for, in client order, each event carrying the module that owns it:

- module calls (`ModuleCall`): `module_input(call)` before a module runs, which may return new
  `(args, kwargs)`, `module_call(call)` in place of its forward, which may return the output to use instead of
  running it (None runs it: a forward skipped this way costs nothing, which lets a sweep reuse stored outputs),
  and `module_output(call)` after it, which may return a new output (None keeps it). A client names the
  modules it wants in `modules` (None: every module of the model);
- torch function calls (`FunctionCall`), for the function names in `functions` (or `ALL_FUNCTIONS`):
  `function(call)` returns the call's result, usually `call.proceed()` (the next client, then torch), or
  the result of `call.proceed(*other_args, **other_kwargs)` to rewrite the call, or anything else to
  replace it;
- attention (`workbench.lm.observe`): the listener methods `on_pattern`, `on_sdpa`, `on_softmax` and
  `on_folded_softmax`, with `current` naming the module that owns the call, and the editor method
  `edit_attention` (keys knocked out of a call's scores or probabilities, before any listener sees them).

`intercept(model, *clients, first=True)` puts the context's module hooks ahead of every other module hook of the
process, after those of earlier `first` contexts: an observer (a trace) opened before or inside it then sees
the values its clients wrote, and nested editors apply outermost first.

Editors and observers are the same kind of client: an observer returns what it was given. Every hook, mode and
patch is removed when the context exits, also on an exception or KeyboardInterrupt, and a model that raised
inside is left exactly as it was found.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InterventionError
from .observe import watch_attention

__all__ = ["ALL_FUNCTIONS", "Client", "FunctionCall", "Interception", "ModuleCall", "intercept", "module_hooks"]

ALL_FUNCTIONS = frozenset({"*"})  # a client's `functions` that asks for every torch call
_ATTENTION_EVENTS = ("on_pattern", "on_sdpa", "on_softmax", "on_folded_softmax", "edit_attention")


@dataclass
class ModuleCall:
    """One call of one module: `call` counts the module's earlier calls inside the context (0 for the first:
    a generation step or a shared block runs a module more than once). In `module_call`, `forward` is the
    module's own forward beneath the interception, for a client that runs it on other inputs (a part of the
    batch) and returns what it makes of the result."""

    name: str
    module: nn.Module
    args: tuple
    kwargs: dict[str, Any]
    call: int
    output: Any = None
    forward: Callable[..., Any] | None = None


@dataclass
class FunctionCall:
    """One torch function call made while a module of the model runs (`module` is the innermost, "" for the
    root, None outside the model)."""

    name: str
    func: Callable[..., Any]
    args: tuple
    kwargs: dict[str, Any]
    module: str | None
    _rest: list[Any] = field(default_factory=list, repr=False)

    def proceed(self, *args: Any, **kwargs: Any) -> Any:
        """The result of the next client's `function`, or of torch's function after the last client; with no
        arguments, the call's own."""
        if not args and not kwargs:
            args, kwargs = self.args, self.kwargs
        if not self._rest:
            return self.func(*args, **kwargs)
        following = FunctionCall(self.name, self.func, args, kwargs, self.module, self._rest[1:])
        return self._rest[0].function(following)


class Client:
    """A base for observers and editors; every method keeps the forward as it is."""

    modules: Collection[str] | None = ()  # module names whose calls this client wants; None: every module
    functions: Collection[str] = ()  # torch function names (`func.__name__`) it wants, or ALL_FUNCTIONS
    # True: `module_input` reads and returns positional arguments only (kwargs it is given may be empty, and
    # those it returns are ignored), so the process-wide pre-hook can serve it without a hook of the module's own
    positional_inputs: bool = False

    def module_input(self, call: ModuleCall) -> tuple[tuple, dict[str, Any]] | None:
        return None

    def module_call(self, call: ModuleCall) -> Any:
        return None

    def module_output(self, call: ModuleCall) -> Any:
        return None

    def function(self, call: FunctionCall) -> Any:
        return call.proceed()


class _Functions(TorchFunctionMode):
    """Hands the calls the clients asked for to them; torch turns the mode off while a handler runs, so the
    calls a client makes are not seen again."""

    def __init__(self, owner: Interception, wanted: dict[str, list[Client]], every: list[Client]) -> None:
        super().__init__()
        self.owner, self.wanted, self.every = owner, wanted, every

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        chain = self.wanted.get(name, self.every) if self.wanted else self.every
        if not chain:
            return func(*args, **kwargs)
        call = FunctionCall(name, func, args, kwargs, self.owner.current, chain[1:])
        return chain[0].function(call)


_active = threading.local()  # the interceptions open on this thread, innermost last


class Interception:
    """The scope of one `intercept(model, *clients)`: its hooks, its function mode and the running-module stack.

    Module events come from two process-wide hooks that look each called module up in a table of this model's
    modules (a model of 600 modules costs two registrations, not 1,200 handles), or, when every client names
    a few modules and nothing needs the stack, from hooks on those modules only."""

    def __init__(self, model: nn.Module, clients: tuple[Client, ...], first: bool = False) -> None:
        self.model, self.clients, self.first = model, clients, first
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.stack: list[str] = []
        self.calls: dict[str, int] = {}
        self._by_module: dict[str, list[Client]] = {}
        self._every_module = [c for c in clients if c.modules is None and _edits_modules(c)]
        for c in clients:
            if c.modules is not None and _edits_modules(c):
                for name in c.modules:
                    self._by_module.setdefault(name, []).append(c)
        self._own_pre: set[str] = set()  # modules whose inputs go to clients through their own pre-hook
        self._exit = contextlib.ExitStack()

    @property
    def current(self) -> str | None:
        """The innermost running module of the model ("" the root), None when none runs."""
        return self.stack[-1] if self.stack else None

    # --- entering and leaving ---------------------------------------------------------------------------
    def __enter__(self) -> Interception:
        try:
            self._open()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._exit.close()
        finally:
            self.stack.clear()

    def _open(self) -> None:
        listeners = [c for c in self.clients if any(hasattr(c, e) for e in _ATTENTION_EVENTS)]
        every_fn = [c for c in self.clients if set(c.functions) == ALL_FUNCTIONS]
        wanted: dict[str, list[Client]] = {}
        for c in self.clients:
            for name in c.functions:
                if name != "*":
                    wanted.setdefault(name, [])
        for name, chain in wanted.items():
            chain.extend(c for c in self.clients if name in c.functions or c in every_fn)
        needs_stack = bool(listeners or wanted or every_fn or self.first)
        self._hook_modules(needs_stack)
        self._replace_forwards()
        stack = _stack()
        stack.append(self)
        self._exit.callback(stack.remove, self)
        if wanted or every_fn:
            self._exit.enter_context(_Functions(self, wanted, every_fn))
        for listener in listeners:
            self._exit.enter_context(watch_attention(listener))

    def _hook_modules(self, needs_stack: bool) -> None:
        if not needs_stack and not self._every_module:
            by_id = dict(self.model.named_modules(remove_duplicate=False))
            _refuse_unknown(set(self._by_module) - set(by_id), by_id)
            for name in self._by_module:
                m = by_id[name]
                self._exit.callback(m.register_forward_pre_hook(self._pre, with_kwargs=True).remove)
                self._exit.callback(m.register_forward_hook(self._post, with_kwargs=True, always_call=True).remove)
            return
        self._exit.enter_context(module_hooks(self._global_pre, self._global_post, first=self.first))
        if not self._by_module:
            return
        by_id = dict(self.model.named_modules(remove_duplicate=False))
        _refuse_unknown(set(self._by_module) - set(by_id), by_id)
        for name in self._by_module:  # a process-wide pre-hook cannot see keyword arguments: these can
            if any(_edits_inputs(c) and not c.positional_inputs for c in self._by_module[name]):
                self._own_pre.add(name)
                self._exit.callback(by_id[name].register_forward_pre_hook(self._pre, with_kwargs=True).remove)

    def _replace_forwards(self) -> None:
        """Wrap the forward of each module a client may replace (an instance attribute that shadows the class's
        method, removed on exit), so that the pre- and post-hooks still run around whatever the call returns."""
        replacing = [c for c in self.clients if type(c).module_call is not Client.module_call]
        if not replacing:
            return
        by_name = dict(self.model.named_modules(remove_duplicate=False))
        names = set(by_name) if any(c.modules is None for c in replacing) else {
            n for c in replacing for n in (c.modules or ())}
        for name in sorted(names):
            clients = [c for c in replacing if c.modules is None or name in c.modules]
            self._exit.enter_context(_ReplacedForward(self, name, by_name[name], clients))

    # --- module events ------------------------------------------------------------------------------------
    def _global_pre(self, module: nn.Module, args: tuple) -> tuple | None:
        name = self.names.get(id(module))
        if name is None:
            return None
        self.stack.append(name)
        clients = self._module_clients(name)
        if not clients or name in self._own_pre:  # the module's own pre-hook runs its clients, with kwargs
            return None
        new = self._inputs(name, module, args, {}, clients)
        return None if new is None else new[0]  # a process-wide pre-hook sees positional arguments only

    def _global_post(self, module: nn.Module, args: tuple, *rest: Any) -> Any:
        # (module, args, kwargs, output) normally; (module, args, output) when the forward raised
        name = self.names.get(id(module))
        if name is None or not self.stack:
            return None
        if self.stack[-1] == name:
            self.stack.pop()
        if len(rest) != 2:
            return None
        kwargs, output = rest
        clients = self._module_clients(name)
        return self._outputs(name, module, args, kwargs, output, clients) if clients else None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        name = self.names[id(module)]
        return self._inputs(name, module, args, kwargs, self._module_clients(name))

    def _post(self, module: nn.Module, args: tuple, *rest: Any) -> Any:
        if len(rest) != 2:
            return None
        name = self.names[id(module)]
        kwargs, output = rest
        return self._outputs(name, module, args, kwargs, output, self._by_module[name])

    def _module_clients(self, name: str) -> list[Client]:
        listed = self._by_module.get(name)
        return self._every_module + listed if listed else self._every_module

    def _inputs(self, name: str, module: nn.Module, args: tuple, kwargs: dict, clients: list[Client]
                ) -> tuple[tuple, dict] | None:
        index = self.calls.get(name, 0)
        self.calls[name] = index + 1
        changed = False
        for c in clients:
            new = c.module_input(ModuleCall(name, module, args, kwargs, index))
            if new is not None:
                (args, kwargs), changed = new, True
        return (args, kwargs) if changed else None

    def _outputs(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any,
                 clients: list[Client]) -> Any:
        index = self.calls.get(name, 1) - 1
        changed = False
        for c in clients:
            new = c.module_output(ModuleCall(name, module, args, kwargs, index, output))
            if new is not None:
                output, changed = new, True
        return output if changed else None


_FIRST: list[tuple[int, int]] = []  # (pre, post) hook ids of the open `first` interceptions, in opening order


def _put_first(pre: int, post: int) -> None:
    """Order the process-wide module hooks: those of `first` interceptions in opening order, then the rest
    (torch runs them in the order of its dicts, which `move_to_end` rearranges without re-registering)."""
    _FIRST.append((pre, post))
    hooks = nn.modules.module
    for pre_id, post_id in reversed(_FIRST):
        for table, hook_id in ((hooks._global_forward_pre_hooks, pre_id), (hooks._global_forward_hooks, post_id)):
            if isinstance(table, OrderedDict) and hook_id in table:
                table.move_to_end(hook_id, last=False)
class _ReplacedForward:
    """`module.forward` asks `clients` (in order) for the output first, and runs only when none gives one."""

    def __init__(self, scope: Interception, name: str, module: nn.Module, clients: list[Client]) -> None:
        self.scope, self.name, self.module, self.clients = scope, name, module, clients
        self.own = module.__dict__.get("forward")  # a forward already set on the instance (another scope's)
        self.original = module.forward

    def __enter__(self) -> _ReplacedForward:
        self.module.forward = self  # type: ignore[method-assign]  # restored in __exit__
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.own is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self.own  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        index = max(self.scope.calls.get(self.name, 1) - 1, 0)  # counted by the pre-hook that ran just before
        call = ModuleCall(self.name, self.module, args, kwargs, index, forward=self.original)
        for c in self.clients:
            output = c.module_call(call)
            if output is not None:
                return output
        return self.original(*args, **kwargs)


def _refuse_unknown(unknown: set[str], known: dict[str, nn.Module]) -> None:
    if unknown:
        name = sorted(unknown)[0]
        near = difflib.get_close_matches(name, list(known), n=3)
        hint = f" Did you mean {', '.join(map(repr, near))}?" if near else " See model.named_modules()."
        raise InterventionError(f"the model has no module named {name!r}.{hint}")


def _edits_modules(client: Client) -> bool:
    """Whether the client overrides a module event (an observer of functions only needs no module hooks)."""
    kind = type(client)
    return (kind.module_input is not Client.module_input or kind.module_output is not Client.module_output
            or kind.module_call is not Client.module_call)


def _edits_inputs(client: Client) -> bool:
    return type(client).module_input is not Client.module_input


def _stack() -> list[Interception]:
    stack = getattr(_active, "stack", None)
    if stack is None:
        stack = _active.stack = []
    return stack


def innermost() -> Interception | None:
    """The interception opened last on this thread and still open, if any."""
    stack = _stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def module_hooks(pre: Callable[[nn.Module, tuple], Any], post: Callable[..., Any],
                 modules: Collection[nn.Module] | None = None, *, first: bool = False) -> Iterator[None]:
    """Plain forward hooks, removed on exit: `pre(module, args)` before a module call, `post(module, args,
    kwargs, output)` after it, or `post(module, args, output)` when its forward raised. With `modules` None
    they are the two process-wide hooks (every module call of the process), else hooks on those modules.
    `Interception` runs on them; a hot path that cannot afford an event object per call (capture's
    `Recorder`) registers its own here rather than through torch. `first` puts the process-wide pair ahead of
    every other process-wide module hook (see `_put_first`)."""
    with contextlib.ExitStack() as handles:
        if modules is None:
            hooks = nn.modules.module
            pre_handle = hooks.register_module_forward_pre_hook(pre)
            handles.callback(pre_handle.remove)
            post_handle = hooks.register_module_forward_hook(post, with_kwargs=True, always_call=True)
            handles.callback(post_handle.remove)
            if first:
                _put_first(pre_handle.id, post_handle.id)
                handles.callback(_FIRST.remove, (pre_handle.id, post_handle.id))
        else:
            each = _EachModule(post)
            for m in modules:
                handles.callback(m.register_forward_pre_hook(pre).remove)
                handles.callback(m.register_forward_hook(each.returned, with_kwargs=True).remove)
                handles.callback(m.register_forward_hook(each.finished, always_call=True).remove)
        yield


class _EachModule:
    """A module's own always_call hook with kwargs is called with output None when forward raises, which a
    module may also return: so a kwargs hook does the work, and an always_call hook without kwargs,
    registered after it, tells `post` of the call only when forward raised (the kwargs hook did not run just
    before it for this module)."""

    def __init__(self, post: Callable[..., Any]) -> None:
        self.post = post
        self.closed: nn.Module | None = None

    def returned(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        self.closed = module
        return self.post(module, args, kwargs, output)

    def finished(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.closed is module:  # forward returned: `returned` has just told `post`
            self.closed = None
            return
        self.post(module, args, output)  # forward raised


@contextlib.contextmanager
def intercept(model: nn.Module, *clients: Client, first: bool = False) -> Iterator[Interception]:
    """Observe and edit `model`'s forward with `clients` inside the block (see the module docstring); `first`
    runs their module events ahead of every other module hook."""
    with Interception(model, clients, first) as scope:
        yield scope
