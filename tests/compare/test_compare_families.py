"""No false divergence on HF's own implementations: each `hfzoo` family compared with itself under the other
attention implementation (SDPA against eager, same weights) is equivalent within float32 noise at every point,
including OPT, whose blocks flatten batch and positions into one dim around the MLP."""

from __future__ import annotations

import warnings

import hfzoo
import pytest
import torch
from families.familymodels import randomize

from workbench.compare import compare

pytest.importorskip("transformers")


@pytest.mark.parametrize("family", hfzoo.FAMILIES)
def test_sdpa_and_eager_of_one_family_are_equivalent(family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        sdpa = randomize(hfzoo.build(family), (0.5, 1.5))
        eager = randomize(hfzoo.build(family, attn="eager"), (0.5, 1.5))
        c = compare(eager, sdpa)
    assert c.equivalent, c.summary()
    assert c.weights.exact and not c.alignment.unpaired_reference and not c.alignment.unpaired_candidate
    assert c.cases == ("batch", "padded", "cached")
    assert c.errors and not any(e.above for e in c.errors), c.summary()  # nan (missing) and inf count as above
