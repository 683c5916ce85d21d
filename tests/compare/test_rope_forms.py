"""RoPE tables recognised by value in every form, rebuilt in their own layout, and the fix's reading of them."""

from __future__ import annotations

import math

import hfzoo
import pytest
import torch
from torch import nn

from workbench.compare.rope import RebuiltRotary, Rotary, read_table, rope_fixes, tables

P = 16


def freqs(base: float = 10000.0, d: int = 8) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)


def angles(f: torch.Tensor) -> torch.Tensor:
    return torch.outer(torch.arange(P, dtype=torch.float32), f)  # (P, n)


def forms(f: torch.Tensor) -> dict[str, tuple[torch.Tensor, str, str]]:
    """name -> (table, kind, layout) in every form ports keep them."""
    a = angles(f)
    halves, pairs = torch.cat((a, a), -1), a.repeat_interleave(2, -1)
    return {
        "freqs_cis": (torch.polar(torch.ones_like(a), a), "complex", "single"),
        "stacked": (torch.stack((a.cos(), a.sin()), -1), "pair", "single"),
        "cos_cached": (halves.cos()[None, None], "cos", "halves"),
        "sin_table": (halves.sin(), "sin", "halves"),
        "c": (pairs.cos(), "cos", "pairs"),
        "s": (a.sin(), "sin", "single"),
        "inv_freq": (f, "inv_freq", "single"),
    }


@pytest.mark.parametrize("name", list(forms(freqs())))
def test_every_form_is_recognised_by_value_and_rebuilt_in_its_own_layout(name):
    f = freqs(500000.0)
    value, kind, layout = forms(f)[name]
    table = read_table(name, nn.Module(), name, value)
    assert table is not None and (table.kind, table.layout) == (kind, layout)
    coarse = kind == "cos"  # a cosine near 1 hides a small angle: read to a few percent, still rebuilt exactly
    torch.testing.assert_close(table.freqs.float(), f, rtol=5e-2 if coarse else 1e-4, atol=0)
    assert torch.equal(table.rebuilt(f), value)  # the same values, shape and dtype, from the frequencies
    other = table.rebuilt(freqs())  # rebuilt from the reference's frequencies, in the table's own layout
    want, _, _ = forms(freqs())[name]
    assert other.shape == value.shape and torch.equal(other, want)


@pytest.mark.parametrize("value", [
    torch.randn(P, 8), torch.ones(P, 8), torch.zeros(P, 8), torch.ones(P, P, dtype=torch.bool).tril(),
    torch.arange(P * 4, dtype=torch.float32).view(P, 4), torch.randn(2, P, 8).cos()])
def test_other_tensors_are_not_tables(value):
    assert read_table("t", nn.Module(), "t", value) is None


class Holder(nn.Module):
    def __init__(self, base: float, d: int, rotated: int) -> None:
        super().__init__()
        a = torch.outer(torch.arange(P, dtype=torch.float32), 1.0 / base ** (torch.arange(0, rotated, 2) / d))
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(a), a))
        self.cos_cache = torch.cat((a, a), -1).cos()  # a plain tensor attribute
        self.base = base


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return hfzoo.build("llama")  # D = 8, base 10000


@pytest.mark.parametrize("base, d, rotated, name", [
    (500000.0, 8, 8, "RoPE base 10000"), (10000.0, 32, 8, "RoPE dimension 8"), (10000.0, 4, 4, "RoPE rotary dims 8")])
def test_the_fix_names_the_reading_that_fits_and_restores_on_exit(llama, base, d, rotated, name):
    holder = Holder(base, d, rotated)
    before = (holder.freqs_cis, holder.cos_cache, holder.base)
    (fix,) = rope_fixes(llama, holder)
    assert fix.name == name and fix.whole_model
    with fix.apply():
        ref = llama.model.rotary_emb.inv_freq
        assert {t.name for t in tables(holder)} == {"freqs_cis", "cos_cache"}
        assert all(t.matches(ref.double()) for t in tables(holder)) and holder.base == 10000.0
        assert holder.freqs_cis.shape == (P, 4) and holder.cos_cache.shape == (P, 8)
    assert (holder.freqs_cis, holder.cos_cache, holder.base) == before  # the very objects put back


def test_no_fix_where_every_form_already_holds_the_reference_frequencies(llama):
    assert rope_fixes(llama, Holder(10000.0, 8, 8)) == []
    assert rope_fixes(llama, llama) == []


def test_the_reference_rotary_reads_its_config_or_its_own_tables(llama):
    ref = Rotary.of(llama)
    assert ref is not None and ref.base == 10000.0 and ref.dims == 8
    bare = Rotary.of(Holder(500000.0, 8, 8))  # no config: the base read back from the tables' frequencies
    assert bare is not None and bare.dims == 8 and math.isclose(bare.base, 500000.0, rel_tol=1e-3)


def test_a_plain_number_base_alone_is_set_to_the_reference_base(llama):
    class Computes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rope_theta = 1e6

    m = Computes()
    (fix,) = rope_fixes(llama, m)
    assert fix.name == "RoPE base 10000"
    with fix.apply():
        assert m.rope_theta == 10000.0 and isinstance(m.rope_theta, float)
    assert m.rope_theta == 1e6
    with RebuiltRotary([], [], Rotary(freqs().double(), 10000.0)):
        assert m.rope_theta == 1e6  # nothing listed, nothing changed
