"""Small checkpoints and JSON mutations shared by the file-format fuzz cases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

import workbench as wb
from workbench.io.load import load_pretrained

TINY = wb.ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=16, tie_embeddings=False)
IDS = torch.tensor([[1, 5, 7, 3, 9, 2]])

# JSON values of every kind, the hostile ones weighted in: NaN/Inf, huge and negative numbers, strings
# that look like numbers or booleans, containers.
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(["false", "true", "1", "1e-5", "nan", "", "rmsnorm", "rope"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 10**6, 10**12, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "factor", "x"]), st.integers(-2, 4), max_size=2),
)


def tiny_model(config: wb.ModelConfig = TINY) -> wb.TransformerLM:
    torch.manual_seed(0)
    return wb.TransformerLM(config).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def rewrite_json(path: Path, change: Any) -> dict[str, Any]:
    """Apply `change(doc)` to the JSON object in `path` and write it back (NaN written as NaN)."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, allow_nan=True))
    return doc


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same JSON kind (True is not 1; NaN never is)."""
    if isinstance(a, float) and isinstance(b, float) and (math.isnan(a) or math.isnan(b)):
        return False
    return type(a) is type(b) and a == b


def check_loaded(model: wb.TransformerLM, reference: torch.Tensor, *, same: bool) -> None:
    """A model that loaded is never garbage: finite logits, equal to the reference when nothing changed."""
    out = logits(model)
    assert torch.isfinite(out).all(), "a loaded model computes non-finite logits"
    if same:
        torch.testing.assert_close(out, reference, rtol=0, atol=0)


def load(path: Path) -> wb.TransformerLM:
    return load_pretrained(path)
