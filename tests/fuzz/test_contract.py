"""The fuzz contract itself: it must catch raw exceptions and hangs, and let WorkbenchErrors through."""

from __future__ import annotations

import time

import pytest

from workbench.errors import ConfigError

from .conftest import contract


def test_contract_records_a_workbench_error():
    with contract(2) as outcome:
        raise ConfigError("bad size; fix it")
    assert isinstance(outcome.error, ConfigError)


def test_contract_passes_a_clean_result():
    with contract(2) as outcome:
        pass
    assert outcome.error is None


def test_contract_fails_a_raw_exception():
    with pytest.raises(pytest.fail.Exception, match="raw KeyError"):
        with contract(2):
            raise KeyError("x")


def test_contract_fails_a_hang():
    with pytest.raises(pytest.fail.Exception, match="hang"):
        with contract(1):
            time.sleep(5)
