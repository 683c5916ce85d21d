"""The display registry: handlers keyed by type and found along the `__mro__`, scoped overrides that always
restore, and what a record shows when no view is registered."""

from __future__ import annotations

import pytest

from workbench.display import EXPORT, NOTEBOOK, TypeRegistry, export_html, notebook_html, unregistered_html
from workbench.doctor.report import Finding, Report
from workbench.errors import DisplayError, WorkbenchError
from workbench.safehtml import html


class Base:
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Mixin:
    pass


class Both(Mixin, Child):  # MRO: Both, Mixin, Child, Base, object
    pass


class Unshown:
    def __repr__(self) -> str:
        return "<Unshown & co>"


def base_view(record: object) -> str:
    return "base"


def child_view(record: object) -> str:
    return "child"


def mixin_view(record: object) -> str:
    return "mixin"


def test_a_subclass_finds_its_nearest_registered_base_along_the_mro():
    reg: TypeRegistry = TypeRegistry("test")
    assert reg.lookup(GrandChild) is None
    reg.register(Base, base_view)
    assert reg.lookup(Base) is base_view and reg.lookup(GrandChild) is base_view
    assert reg.lookup(Mixin) is None and reg.lookup(object) is None
    reg.register(Mixin, mixin_view)
    assert reg.lookup(Both) is mixin_view  # Mixin comes before Base in Both.__mro__


def test_the_most_specific_registration_wins_and_leaves_the_bases_alone():
    reg: TypeRegistry = TypeRegistry("test")
    reg.register(Child, child_view)
    reg.register(Base, base_view)  # registration order does not matter, the MRO does
    assert reg.lookup(GrandChild) is child_view and reg.lookup(Child) is child_view
    assert reg.lookup(Base) is base_view
    assert reg.registered() == {Child: child_view, Base: base_view}


def test_a_scoped_override_restores_the_previous_handler_even_after_an_exception():
    reg: TypeRegistry = TypeRegistry("test")
    reg.register(Base, base_view)
    with pytest.raises(RuntimeError, match="inside"):
        with reg.override(Base, child_view):
            assert reg.lookup(GrandChild) is child_view
            raise RuntimeError("inside")
    assert reg.lookup(GrandChild) is base_view and reg.registered() == {Base: base_view}
    with reg.override(Child, mixin_view):  # a type with no registration of its own: removed again on exit
        assert reg.lookup(GrandChild) is mixin_view and reg.lookup(Base) is base_view
    assert reg.registered() == {Base: base_view}
    with reg.override(Base, None):  # None removes the registration for the block
        assert reg.lookup(GrandChild) is None
    assert reg.lookup(GrandChild) is base_view


def test_overrides_nest_and_unwind_in_order():
    reg: TypeRegistry = TypeRegistry("test")
    reg.register(Base, base_view)
    with reg.override(Base, child_view):
        with reg.override(Base, mixin_view):
            assert reg.lookup(Base) is mixin_view
        assert reg.lookup(Base) is child_view
    assert reg.lookup(Base) is base_view


def test_bad_registrations_raise_display_errors_that_name_the_fix():
    reg: TypeRegistry = TypeRegistry("notebook HTML")
    with pytest.raises(DisplayError, match="registered for a type.*got str 'Base'; pass the class itself"):
        reg.register("Base", base_view)  # type: ignore[arg-type]
    with pytest.raises(DisplayError, match="view for Base must be callable.*got str"):
        reg.register(Base, "base")  # type: ignore[arg-type]
    with pytest.raises(DisplayError, match="registered for a type"):
        with reg.override(Base(), None):  # type: ignore[arg-type]
            pass
    assert reg.registered() == {}
    assert issubclass(DisplayError, WorkbenchError)


def test_with_no_view_a_notebook_shows_the_escaped_text_and_says_why():
    page = notebook_html(Unshown())
    assert "<pre>&lt;Unshown &amp; co&gt;</pre>" in page
    assert f"No HTML view is registered for {__name__}.Unshown, so its text is shown" in page
    assert page == str(unregistered_html(Unshown()))


def test_a_record_whose_view_is_removed_falls_back_to_its_text():
    report = Report([Finding("<b>causal_leak</b>", "fail", "future leaks", {"delta": 0.5})], model="M")
    assert "<table>" in report._repr_html_()
    with NOTEBOOK.override(Report, None):
        page = report._repr_html_()
    assert "<table>" not in page and "&lt;b&gt;causal_leak&lt;/b&gt;" in page
    assert "Doctor report for M: 1 fail" in page  # str(report): the text a notebook shows without HTML
    assert "No HTML view is registered for workbench.doctor.report.Report" in page
    assert "<table>" in report._repr_html_()  # restored


def test_an_export_with_no_view_raises_and_names_the_type(tmp_path):
    with pytest.raises(DisplayError, match=f"no HTML export is registered for {__name__}.Unshown; import workbench"):
        export_html(Unshown(), tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_a_plain_string_from_a_view_is_shown_as_text_and_markup_passes():
    with NOTEBOOK.override(Unshown, lambda record: "<i>plain</i>"):
        assert notebook_html(Unshown()) == "&lt;i&gt;plain&lt;/i&gt;"
    with NOTEBOOK.override(Unshown, lambda record: html("<i>{}</i>", "<safe>")):
        assert notebook_html(Unshown()) == "<i>&lt;safe&gt;</i>"
    assert NOTEBOOK.lookup(Unshown) is None and EXPORT.lookup(Unshown) is None
