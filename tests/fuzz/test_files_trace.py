"""Trace files: the whole document is validated on load, so a loaded trace never crashes on first use."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import workbench as wb
from workbench.capture.trace import Trace
from workbench.errors import CaptureError, CorruptFileError

from .conftest import FUZZ, contract
from .files import IDS, JSON_VALUES, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trace with module records, attention maps and gradients, saved; its document and maps."""
    model = tiny_model()
    with wb.trace(model, attention=True, gradients=True) as tr:
        model(IDS).sum().backward()
    path = tr.save(tmp_path_factory.mktemp("trace") / "t.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        maps = {k: f.get_tensor(k) for k in f.keys()}
    return path, header, maps, tr.summary()


def _write(path, header, maps, doc):
    save_file(maps, str(path), metadata={**header, "trace": json.dumps(doc, allow_nan=True)})
    return path


def _use(tr: Trace) -> None:
    """What a notebook does first with a loaded trace: every one of these must work."""
    tr.summary()
    repr(tr)
    tr.to_dataframe()
    tr.first_nonfinite()
    tr.module_memory()
    for a in tr.attention:
        if a.map is not None:
            assert a.map.shape[:2] == (len(a.batch), len(a.heads))


def test_saved_trace_round_trips(saved):
    tr = Trace.load(saved[0])
    assert tr.summary() == saved[3]


# --- regressions: one wrong type per record kind -----------------------------------------------------------------
@pytest.mark.parametrize(
    "where, change, words",
    [
        ("records", lambda d: d["records"][0].__setitem__("index", "0"), "records.0.index"),
        ("records", lambda d: d["records"][1].__setitem__("name", 5), "records.1.name"),
        ("records", lambda d: d["records"][1]["outputs"][0].__setitem__("shape", 3), "records.1.outputs.0.shape"),
        ("records", lambda d: d["records"][1]["out_stats"].__setitem__("nan", "0"), "records.1.out_stats.nan"),
        ("records", lambda d: d["records"][1].__setitem__("parent", 999), "parent 999"),
        ("records", lambda d: d["records"][1].__setitem__("surprise", 1), "records.1.surprise"),
        ("attention", lambda d: d["attention"][0].__setitem__("full_shape", 4), "attention.0.full_shape"),
        ("attention", lambda d: d["attention"][0].__setitem__("heads", [99]), "attention.0.heads"),
        ("attention", lambda d: d["attention"][0]["metrics"].__setitem__("entropy", [1.0]), "metrics.entropy"),
        ("attention", lambda d: d["attention"][0].__setitem__("batch", [0, 0]), "not a float map"),
        ("gradients", lambda d: d["gradients"][0].__setitem__("grad_norm", "1.0"), "gradients.0.grad_norm"),
        ("gradients", lambda d: d["gradients"][0].__setitem__("shape", None), "gradients.0.shape"),
        ("meta", lambda d: d["meta"].pop("model"), "meta: model: Field required"),
        ("meta", lambda d: d["meta"].__setitem__("attention_bytes", "big"), "attention_bytes"),
        ("document", lambda d: d.pop("gradients"), "gradients: Field required"),
    ],
)
def test_wrong_types_are_refused_on_load(saved, tmp_path, where, change, words):
    doc = json.loads(saved[1]["trace"])
    change(doc)
    path = _write(tmp_path / "bad.safetensors", saved[1], saved[2], doc)
    with contract() as outcome:
        Trace.load(path)
    assert isinstance(outcome.error, CorruptFileError), outcome.error
    assert words in str(outcome.error) and str(path) in str(outcome.error)


def test_map_of_the_wrong_shape_is_refused(saved, tmp_path):
    maps = {**saved[2], "attention.0": torch.zeros(3, 3)}
    path = _write(tmp_path / "bad.safetensors", saved[1], maps, json.loads(saved[1]["trace"]))
    with pytest.raises(CorruptFileError, match="not a float map"):
        Trace.load(path)


@pytest.mark.parametrize("header", [{"format": "workbench.trace", "version": "x"}, {"format": "workbench.trace"},
                                    {"format": "workbench.trace", "version": "1", "trace": "[1]"},
                                    {"format": "workbench.trace", "version": "1", "trace": "{"}])
def test_bad_trace_headers(tmp_path, header):
    path = tmp_path / "t.safetensors"
    save_file({}, str(path), metadata=header)
    with contract() as outcome:
        Trace.load(path)
    assert isinstance(outcome.error, CorruptFileError)


def test_save_into_a_missing_folder_creates_it(saved, tmp_path):
    tr = Trace.load(saved[0])
    path = tr.save(tmp_path / "new" / "deeper" / "t.safetensors")
    assert Trace.load(path).summary() == saved[3]
    with pytest.raises(CaptureError, match="is a folder"):
        tr.save(tmp_path / "new")


# --- properties -----------------------------------------------------------------------------------------------
def _leaves(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(doc, list) and doc:
        for i, v in enumerate(doc[:3]):
            yield from _leaves(v, (*prefix, i))
    else:
        yield prefix


@pytest.fixture(scope="module")
def leaves(saved):
    return list(_leaves(json.loads(saved[1]["trace"])))


@FUZZ(80)
@given(data=st.data(), value=JSON_VALUES)
def test_any_leaf_value(saved, leaves, tmp_path_factory, data, value):
    doc = json.loads(saved[1]["trace"])
    where = data.draw(st.sampled_from(leaves), label="leaf")
    node = doc
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = _write(tmp_path_factory.mktemp("leaf") / "t.safetensors", saved[1], saved[2], doc)
    with contract():
        tr = Trace.load(path)
        _use(tr)  # a trace that loads must work: a crash here is a raw exception and fails the case
