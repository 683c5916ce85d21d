"""Tokenizers rebuilt from GGUF metadata, checked id-for-id against HF transformers on the same file.

Special-token ids are checked against the file's own metadata: which of them HF's GGUF loader adopts has
changed between its releases (5.17 reads eos 1 and no pad from this file, 5.24 reads eos 2 and pad 2)."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import UnsupportedModelError
from workbench.io.gguf import open_gguf
from workbench.io.gguf_tokenizer import tokenizer_from_gguf, tokenizer_from_metadata
from workbench.io.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion\n",
    "In 2024 the price rose 12.5% to $1,234,567.89 (up from 0.001).",
    "naïve café, Straße, 東京は日本の首都です, Привет мир, emoji 🤖🚀👍🏽",
    "   three leading spaces, a\ttab,\n\n\ttwo newlines and trailing spaces   ",
    "I'm sure they'll say we've done what you'd've",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "x" * 40 + " " + "-" * 30 + "==>",
    "{\"key\": [1, 2, 3], 'nested': {'a': null}}",
    "Ġ and Ċ look like byte-level symbols but are ordinary text here",
]


@pytest.fixture(scope="module")
def ours(smollm2_path) -> Tokenizer:
    return tokenizer_from_gguf(smollm2_path)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_hf_and_decode_round_trips(ours, hf_smollm2_tokenizer, text):
    ids = ours.encode(text)
    assert ids == hf_smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids) == text
    assert ours.decode(ids) == hf_smollm2_tokenizer.decode(ids)


def _metadata_id(path, key: str) -> int:
    return open_gguf(path).get(f"tokenizer.ggml.{key}")


def test_special_tokens_follow_the_file_and_ids_match_hf(ours, hf_smollm2_tokenizer, smollm2_path):
    hf = hf_smollm2_tokenizer
    special = tuple(_metadata_id(smollm2_path, k) for k in ("bos_token_id", "eos_token_id", "padding_token_id"))
    assert special == (1, 2, 2)  # <|im_start|>, <|im_end|>, <|im_end|> in SmolLM2-Instruct's GGUF
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == special
    assert ours.vocab_size == len(hf)
    chat = "<|im_start|>user\nHi<|im_end|>"
    ids = ours.encode(chat)
    assert ids[0] == hf.convert_tokens_to_ids("<|im_start|>") and ids[-1] == hf.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert ours.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True) == "user\nHi"
    assert ours.token_strings(ids)[0] == "<|im_start|>"


def test_batch_is_left_padded_with_the_pad_id(ours):
    batch = ours(["Hello", "Hello there, how are you?"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    short = ours.encode("Hello")
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert ids[0, -len(short) :].tolist() == short
    assert ids[0, : -len(short)].eq(ours.pad_token_id).all() and mask[0].sum().item() == len(short)
    assert mask[1].all() and mask.dtype == torch.long


def test_saved_tokenizer_json_reloads_identically(ours, tmp_path):
    path = tmp_path / "tokenizer.json"
    ours.backend.save(str(path))
    again = Tokenizer.from_file(path, bos_token_id=ours.bos_token_id, eos_token_id=ours.eos_token_id)
    for text in TEXTS:
        assert again.encode(text) == ours.encode(text)
    chat = ours.encode(TEXTS[6])
    assert again.decode(chat, skip_special=True) == ours.decode(chat, skip_special=True)
    assert again.vocab_size == ours.vocab_size and again.pad_token_id == ours.eos_token_id


def _meta(**changes):
    tokens = ["<s>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12"]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["a b", "Ġ ab", "1 2"],
        "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1),
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    return meta | changes


def test_pre_tokenizer_choice_follows_gguf_name():
    # GPT-2's rule keeps a run of digits together, so the "1 2" merge applies; SmolLM splits digits first.
    assert tokenizer_from_metadata(_meta()).encode("ab ab12", add_bos=False) == [3, 5, 8]
    assert tokenizer_from_metadata(_meta(**{"tokenizer.ggml.pre": "smollm"})).encode("12") == [0, 6, 7]
    with pytest.warns(UserWarning, match="'qwen9'"):
        tokenizer_from_metadata(_meta(**{"tokenizer.ggml.pre": "qwen9"}))


def test_sentencepiece_gguf_tokenizer_is_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        tokenizer_from_metadata(_meta(**{"tokenizer.ggml.model": "llama"}))
