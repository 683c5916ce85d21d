"""The metric helpers against their definitions computed by hand, and metrics that are refused."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import InterventionError
from workbench.interventions.metrics import check_metric, logit_diff, target_logprob

LOGITS = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))  # (B, T, V)


def test_logit_diff_at_the_last_position():
    got = logit_diff(4, 7)(LOGITS)
    assert torch.equal(got, LOGITS[:, -1, 4] - LOGITS[:, -1, 7])


def test_logit_diff_averages_over_the_positions_given_with_a_token_each():
    got = logit_diff([1, 2], [3, 4], positions=[1, 3])(LOGITS)
    expected = ((LOGITS[:, 1, 1] - LOGITS[:, 1, 3]) + (LOGITS[:, 3, 2] - LOGITS[:, 3, 4])) / 2
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_target_logprob_sums_the_log_probabilities():
    got = target_logprob([6, 9], positions=[2, -1])(LOGITS)
    logp = torch.log_softmax(LOGITS, dim=-1)
    torch.testing.assert_close(got, logp[:, 2, 6] + logp[:, 4, 9], rtol=0, atol=1e-6)
    assert torch.equal(target_logprob(6)(LOGITS), logp[:, -1, 6])


def test_check_metric_passes_one_value_per_row():
    assert torch.equal(check_metric(logit_diff(0, 1), LOGITS), LOGITS[:, -1, 0] - LOGITS[:, -1, 1])


@pytest.mark.parametrize("metric", [
    lambda x: x[:, -1, 0].mean(),  # a scalar, not one per row
    lambda x: float(x[0, -1, 0]),  # a Python number
    lambda x: x[:, -1],  # (B, V)
    lambda x: x[:, -1, 0].argmax(dim=0, keepdim=True).expand(3),  # integers
])
def test_a_metric_that_is_not_one_float_per_row_is_refused_with_the_fix(metric):
    with pytest.raises(InterventionError, match=r"one float per batch row, a tensor shaped \(3,\).*keep dim 0"):
        check_metric(metric, LOGITS)


def test_not_a_callable_is_refused():
    with pytest.raises(InterventionError, match="must be a callable"):
        check_metric("logit_diff", LOGITS)  # type: ignore[arg-type]


@pytest.mark.parametrize("make, message", [
    (lambda: logit_diff(4, 99), r"token id 99 is outside the vocabulary of 11"),
    (lambda: logit_diff(4, 5, positions=5), r"position 5 is outside the sequence of 5 tokens"),
    (lambda: target_logprob(-1), r"token id -1 is outside"),
    (lambda: target_logprob(1, positions=-6), r"position -6 is outside"),
])
def test_tokens_and_positions_outside_are_refused(make, message):
    with pytest.raises(InterventionError, match=message):
        make()(LOGITS)


def test_a_token_count_that_does_not_match_the_positions_is_refused():
    with pytest.raises(InterventionError, match="gives 3 tokens for 2 positions"):
        logit_diff([1, 2, 3], 4, positions=[0, 1])
    with pytest.raises(InterventionError, match="token id or a sequence of token ids"):
        target_logprob("Paris")  # type: ignore[arg-type]


def test_a_metric_that_raises_is_an_intervention_error_with_its_cause():
    with pytest.raises(InterventionError, match=r"the metric raised ZeroDivisionError: division by zero") as info:
        check_metric(lambda logits: 1 / 0, torch.zeros(2, 3, 5))
    assert isinstance(info.value.__cause__, ZeroDivisionError)
