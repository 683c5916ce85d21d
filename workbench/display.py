"""One display policy: per record type, the view that shows it in a notebook and the one that writes its page.

Records (a `Trace`, a `Comparison`, a doctor `Report`, a `LoadReport`) are plain data and know nothing of
HTML. A record's `_repr_html_` returns `notebook_html(self)`, and its export convenience (`Trace.report_html`,
`Comparison.save_html`) returns `export_html(self, path)`. The views register per type, one registry per medium,
as IPython keeps one formatter per MIME type:

    NOTEBOOK.register(Report, report_table)        # record -> HTML (workbench.safehtml Markup)
    EXPORT.register(Comparison, save_comparison)   # (record, path, **options) -> the path written

A handler is found along the record type's `__mro__` (treescope's type registries and IPython's
`formatter.for_type` do the same), so a subclass shows as its nearest registered base until it registers its
own. `import workbench` registers every workbench view (`workbench.views.register_views`), and so does any
`import workbench.capture` (Python runs the package's `__init__` first). `with NOTEBOOK.override(Report, view):`
swaps one handler for a block (None removes it) and always restores the previous one.

With no handler, the notebook shows the record's text (`repr`), escaped, under a note saying that no HTML
view is registered for its type: a display hook must not raise. An export with no handler raises
DisplayError: the caller asked for a page, and a page without the view would not be the page asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import DisplayError
from .safehtml import Markup, html, text

__all__ = ["EXPORT", "NOTEBOOK", "ExportView", "NotebookView", "TypeRegistry", "export_html", "notebook_html"]

NotebookView = Callable[[Any], str]  # record -> HTML block; a plain string is escaped (shown as text)
ExportView = Callable[..., Path]  # (record, path, **options) -> the page written
H = TypeVar("H", bound=Callable[..., Any])


class TypeRegistry(Generic[H]):
    """Handlers keyed by type and found along the `__mro__`: the most specific registration wins."""

    def __init__(self, medium: str) -> None:
        self.medium = medium  # what the handlers produce, for messages: "notebook HTML", "HTML export"
        self._handlers: dict[type, H] = {}

    def register(self, cls: type, handler: H) -> None:
        """Make `handler` the view of `cls` and of its subclasses that register none of their own."""
        self._check_type(cls)
        self._check_handler(cls, handler)
        self._handlers[cls] = handler

    def lookup(self, cls: type) -> H | None:
        """The handler of `cls` or of its nearest base in `cls.__mro__`; None when none is registered."""
        return next((self._handlers[base] for base in cls.__mro__ if base in self._handlers), None)

    def registered(self) -> dict[type, H]:
        """A copy of the registrations (type -> its own handler), for inspection."""
        return dict(self._handlers)

    @contextmanager
    def override(self, cls: type, handler: H | None) -> Iterator[None]:
        """Within the block `cls` uses `handler` (None: `cls`'s own registration is removed, so it falls back to
        a base's handler or to none); the previous registration is restored on exit, also after an exception."""
        self._check_type(cls)
        if handler is not None:
            self._check_handler(cls, handler)
        saved = {cls: self._handlers[cls]} if cls in self._handlers else {}
        if handler is None:
            self._handlers.pop(cls, None)
        else:
            self._handlers[cls] = handler
        try:
            yield
        finally:
            self._handlers.pop(cls, None)
            self._handlers.update(saved)

    def _check_type(self, cls: Any) -> None:
        if not isinstance(cls, type):
            raise DisplayError(f"a {self.medium} view is registered for a type (a record class), "
                               f"got {type(cls).__name__} {cls!r}; pass the class itself.")

    def _check_handler(self, cls: type, handler: Any) -> None:
        if not callable(handler):
            raise DisplayError(f"the {self.medium} view for {cls.__name__} must be callable (a function of the "
                               f"record), got {type(handler).__name__}.")


NOTEBOOK: TypeRegistry[NotebookView] = TypeRegistry("notebook HTML")
EXPORT: TypeRegistry[ExportView] = TypeRegistry("HTML export")


def notebook_html(record: Any) -> str:
    """`record` as HTML for a notebook cell: its registered view, else its text with a note saying why."""
    view = NOTEBOOK.lookup(type(record))
    if view is None:
        return str(unregistered_html(record))
    return str(text(view(record)))  # Markup from a view passes as is; a plain string is shown as text


def export_html(record: Any, path: str | Path, **options: Any) -> Path:
    """Write `record` as an offline HTML page at `path` with its registered export view; returns the path."""
    view = EXPORT.lookup(type(record))
    if view is None:
        raise DisplayError(f"no HTML export is registered for {_qualified(type(record))}; import workbench (it "
                           f"registers the workbench views) or register one with "
                           f"workbench.display.EXPORT.register({type(record).__name__}, write_page).")
    return view(record, path, **options)


def unregistered_html(record: Any) -> Markup:
    """The fallback: the record's text repr, escaped, and a note naming the type that has no view."""
    return html("<div class='wb-unregistered'><pre>{}</pre><p class='wb-note'><i>No HTML view is registered for "
                "{}, so its text is shown. Importing workbench registers the workbench views; "
                "workbench.display.NOTEBOOK.register(type, view) adds one.</i></p></div>",
                repr(record), _qualified(type(record)))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
