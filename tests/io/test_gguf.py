"""GGUF reading: llama.cpp conventions undone, quantized tensors, unsupported and corrupt files.

Small GGUF files are written here with `gguf.GGUFWriter` from random workbench models, following
llama.cpp's converter (q/k rows permuted to pair order, ggml names), then read back.
"""

from __future__ import annotations

import math
import struct

import gguf
import numpy as np
import pytest
import torch
from ggufwrite import llama_tensors, to_pair_order

import workbench as wb
from workbench.errors import CorruptFileError, LoadError, UnsupportedModelError, WeightMismatchError
from workbench.io.gguf import load_gguf, open_gguf, read_gguf, unpermute_rope_rows
from workbench.io.load import load_pretrained
from workbench.model.config import RopeScaling

TINY = wb.ModelConfig.preset("tiny").replace(n_kv_heads=2, rope_theta=5e4, norm_eps=1e-6)


def write_gguf(
    path, model: wb.TransformerLM, *, arch: str = "llama", qtype=None, drop: tuple[str, ...] = (), extra=None
):
    """Write `model` as a llama.cpp-style GGUF; matrices quantized to `qtype` when given.

    extra: called with the writer before the header is written, to add metadata or tensors."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    for name, array in llama_tensors(model).items():
        if name in drop:
            continue
        if qtype is not None and array.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, array)
    if extra is not None:
        extra(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tiny(**changes) -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(TINY.replace(**changes)).eval()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", _tiny())


def test_unpermute_inverts_llama_cpp_row_order():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(4 * 8, 3)  # H=4 heads of D=8 rows
    stored = to_pair_order(w, 4)
    assert not torch.equal(stored, w)
    assert torch.equal(stored[:4], w[[0, 4, 1, 5]])  # head 0: x0, x4, x1, x5 ... (pairs of halves)
    assert torch.equal(unpermute_rope_rows(stored, 4), w)


@pytest.mark.parametrize("tied", [True, False])
def test_float32_gguf_round_trip_is_exact(tmp_path, tied):
    model = _tiny(tie_embeddings=tied)
    loaded = load_gguf(write_gguf(tmp_path / "m.gguf", model))
    assert loaded.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    ids = torch.randint(0, TINY.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(ids), model(ids))
    assert (loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()) == tied
    report = loaded.load_report
    assert report.ok and report.unexpected == [] and report.format == "gguf"
    assert any("tied" in n for n in report.notes) == tied


def test_read_gguf_returns_config_state_and_notes(tiny_file):
    config, state, notes = read_gguf(tiny_file)
    model = _tiny()
    assert config == model.config
    assert set(state) == set(model.state_dict()) - {"lm_head.weight"}
    assert all(
        t.dtype == torch.float32 and tuple(t.shape) == model.state_dict()[k].shape for k, t in state.items()
    )
    assert any("permutation" in n for n in notes)


def test_quantized_q8_0_matches_gguf_dequantization(tmp_path):
    model = _tiny()
    path = write_gguf(tmp_path / "q8.gguf", model, qtype=gguf.GGMLQuantizationType.Q8_0)
    loaded = load_gguf(path)
    down = open_gguf(path).tensor("blk.1.ffn_down.weight")
    assert down.type == gguf.GGMLQuantizationType.Q8_0
    expected = torch.from_numpy(gguf.quants.dequantize(down.data, down.type))
    assert torch.equal(loaded.blocks[1].mlp.down.weight, expected)
    assert not torch.equal(expected, model.blocks[1].mlp.down.weight)  # quantization really happened
    ids = torch.randint(0, TINY.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    assert (loaded(ids) - model(ids)).abs().max().item() < 0.05
    assert any("Q8_0" in n for n in loaded.load_report.notes)


def test_dtype_and_dispatch_from_load_pretrained(tiny_file):
    model = load_pretrained(tiny_file, dtype=torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16 and model.load_report.format == "gguf"
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    reference = load_gguf(tiny_file)
    assert torch.equal(model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight.bfloat16())


def test_missing_tensor_strict_and_lenient(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", _tiny(), drop=("blk.1.ffn_norm.weight",))
    with pytest.raises(WeightMismatchError, match="blocks.1.ln_mlp.weight"):
        load_gguf(path)
    assert load_gguf(path, strict=False).load_report.missing == ["blocks.1.ln_mlp.weight"]


def test_other_architecture_is_refused_by_name(tmp_path):
    path = write_gguf(tmp_path / "g.gguf", _tiny(), arch="gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2'") as info:
        load_gguf(path)
    assert isinstance(info.value, LoadError) and "llama" in str(info.value)


# --- corrupt and foreign files -----------------------------------------------------------------
def _prefix(src, dst, n: int):
    with open(src, "rb") as fh:
        dst.write_bytes(fh.read(n))
    return dst


def test_random_bytes_and_empty_file(tmp_path):
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError, match="magic"):
        load_gguf(noise)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="too short"):
        load_gguf(empty)
    with pytest.raises(LoadError, match="does not exist"):
        load_gguf(tmp_path / "absent.gguf")


def test_truncated_real_file(tmp_path, smollm2_path):
    for n in (20, 300_000, open_gguf(smollm2_path).data_start):  # inside the counts, the token list, before any data
        with pytest.raises(CorruptFileError, match="truncated"):
            open_gguf(_prefix(smollm2_path, tmp_path / f"{n}.gguf", n))
        with pytest.raises(CorruptFileError):
            load_gguf(tmp_path / f"{n}.gguf")


def test_truncated_tensor_data(tmp_path, tiny_file):
    size = tiny_file.stat().st_size
    with pytest.raises(CorruptFileError, match="truncated"):
        load_gguf(_prefix(tiny_file, tmp_path / "cut.gguf", size - 7))


def test_absurd_counts_fail_fast_instead_of_looping(tmp_path):
    """A header whose array claims 2**62 items: the reader alone would loop over empty reads."""
    key = b"tokenizer.ggml.token_type"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 5, 2**62)  # array of int32
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(CorruptFileError, match="truncated"):
        load_gguf(bad)
    huge = tmp_path / "counts.gguf"
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + b"\0" * 64)
    with pytest.raises(CorruptFileError):
        load_gguf(huge)


# --- RoPE scaling --------------------------------------------------------------------------------
def _llama3_rope_freqs(cfg: wb.ModelConfig, factor: float, low: float, high: float, L: int) -> np.ndarray:
    """llama.cpp's converter for Llama 3.x: one float32 divisor of inv_freq per frequency (D/2,),
    computed in float64 from each wavelength 2*pi*theta**(i/D)."""
    out = []
    for i in range(0, cfg.head_dim, 2):
        wavelen = 2 * math.pi * cfg.rope_theta ** (i / cfg.head_dim)
        if wavelen < L / high:
            out.append(1.0)
        elif wavelen > L / low:
            out.append(factor)
        else:
            s = (L / wavelen - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize(
    "factor, low, high, L, with_original, exact",
    [
        (32.0, 1.0, 4.0, 8192, False, True),  # Llama 3.2's numbers; llama.cpp writes only the tensor
        (8.0, 1.0, 8.0, 400, True, True),  # other low/high factors, fitted from the ramp band
        (8.0, 1.0, 8.0, 400, False, False),  # no original context: another L, the same frequencies
    ],
)
def test_rope_freqs_tensor_becomes_llama3_scaling(tmp_path, factor, low, high, L, with_original, exact):
    scaling = RopeScaling("llama3", factor, low_freq_factor=low, high_freq_factor=high, original_max_seq_len=L)
    model = _tiny(rope_scaling=scaling)
    divisors = _llama3_rope_freqs(model.config, factor, low, high, L)
    assert (divisors == 1).any() and (divisors == factor).any() and ((divisors > 1) & (divisors < factor)).any()

    def extra(w):
        w.add_tensor("rope_freqs.weight", divisors)
        if with_original:
            w.add_rope_scaling_orig_ctx_len(L)

    loaded = load_gguf(write_gguf(tmp_path / "l3.gguf", model, extra=extra))
    assert loaded.config.rope_scaling.kind == "llama3"
    assert (loaded.config == model.config) == exact
    torch.testing.assert_close(loaded.rotary.inv_freq, model.rotary.inv_freq, rtol=1e-6, atol=0)
    plain = _tiny().rotary.inv_freq
    assert (plain / loaded.rotary.inv_freq).max() > factor * 0.999  # the long waves really were slowed
    report = loaded.load_report
    assert report.ok and report.unexpected == [] and any("rope_freqs" in n for n in report.notes)
    ids = torch.randint(0, TINY.vocab_size, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=1e-5)


def test_linear_scaling_from_metadata(tmp_path):
    model = _tiny(rope_scaling=RopeScaling("linear", 4.0))

    def extra(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)

    loaded = load_gguf(write_gguf(tmp_path / "lin.gguf", model, extra=extra))
    assert loaded.config == model.config
    assert torch.equal(loaded.rotary.inv_freq, _tiny().rotary.inv_freq / 4.0)
    ids = torch.randint(0, TINY.vocab_size, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def _with(**parts):
    def extra(w):
        if "kind" in parts:
            w.add_rope_scaling_type(parts["kind"])
            w.add_rope_scaling_factor(4.0)
        if "freqs" in parts:
            w.add_tensor("rope_freqs.weight", parts["freqs"])

    return extra


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (_with(kind=gguf.RopeScalingType.YARN), UnsupportedModelError, "scaling.type='yarn' is not supported"),
        (_with(kind=gguf.RopeScalingType.LONGROPE), UnsupportedModelError, "'longrope' is not supported"),
        (
            _with(freqs=np.array([1.0, 3.0, 1.5, 7.0, 2.0, 9.0, 4.0, 5.0], dtype=np.float32)),
            UnsupportedModelError,
            "is not a Llama 3 \\(llama3\\) RoPE scaling rule",
        ),
        (_with(freqs=np.ones(5, dtype=np.float32)), CorruptFileError, "must hold 8 positive finite divisors"),
        (
            _with(kind=gguf.RopeScalingType.LINEAR, freqs=_llama3_rope_freqs(TINY, 8.0, 1.0, 4.0, 8192)),
            UnsupportedModelError,
            "combines linear RoPE scaling",
        ),
    ],
)
def test_unsupported_rope_scaling_is_refused(tmp_path, extra, error, message):
    path = write_gguf(tmp_path / "bad.gguf", _tiny(), extra=extra)
    with pytest.raises(error, match=message):
        load_gguf(path)
