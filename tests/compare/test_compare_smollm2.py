"""`compare` on a real checkpoint: SmolLM2 loaded by the workbench from its GGUF against HF's own load of it."""

from __future__ import annotations

import pytest

from workbench.compare import compare


@pytest.mark.slow
def test_our_gguf_load_of_smollm2_is_equivalent_to_hf(smollm2, hf_smollm2):
    c = compare(hf_smollm2, smollm2[0])  # its speed is measured by benchmarks/compare.py, not here
    assert c.equivalent, c.summary()
    assert c.weights.exact and len(c.weights.matches) == 273  # 30 blocks of 9 tensors, the norm, embedding, head
    assert len(c.alignment.pairs) == 153 and not c.alignment.unpaired_reference
