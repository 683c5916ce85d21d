"""Report rendering and diagnose's arguments: check selection, unknown names, unusable models."""

from __future__ import annotations

import pytest
import torch
from bugzoo.zoo import ZOO
from torch import nn

from workbench import ModelConfig, TransformerLM
from workbench.doctor import CHECK_NAMES, Finding, Report, diagnose
from workbench.doctor.report import Within, format_value
from workbench.errors import DoctorError, WorkbenchError


def test_markdown_html_and_text():
    report = Report([Finding("causal_leak", "fail", "future leaks", {"max_abs_delta": 0.3217, "at_position": 4},
                             "mask shifted", "use tril"),
                     Finding("kv_cache", "n/a", "no cache", {}, "p", "f")], model="M", seconds=1.0)
    md = report.to_markdown()
    assert "| check | status | summary | evidence | fix |" in md
    assert "| causal_leak | FAIL | future leaks | max_abs_delta=0.322, at_position=4 | use tril |" in md
    assert "| kv_cache | N/A | no cache |  |  |" in md  # no fix hint for what does not apply
    html = report._repr_html_()
    assert "<table>" in html and "#cf222e" in html and "FAIL" in html and "N/A" in html
    assert "max_abs_delta</code> = 0.322" in html
    assert "1 fail, 0 warn, 0 pass, 1 n/a" in str(report) and "evidence: max_abs_delta=0.322" in str(report)
    assert report.failed == [report["causal_leak"]] and not report.ok
    with pytest.raises(KeyError):
        report["nope"]
    with pytest.raises(ValueError):
        Finding("x", "bad-status", "")


def test_noise_level_differences_show_as_bounds_that_hold():
    tol = 2.94e-3  # 1e-4 x the largest logit, as the checks derive it
    shown = {v: format_value(Within(v, tol)) for v in (0.0, 4.1e-6, 6.7e-6, 2.9e-5, 2e-4, 2.9e-3)}
    assert shown == {0.0: "<= 3.0e-05", 4.1e-6: "<= 3.0e-05", 6.7e-6: "<= 3.0e-05", 2.9e-5: "<= 3.0e-05",
                     2e-4: "<= 3.0e-04", 2.9e-3: "<= 3.0e-03"}  # two machines' noise prints the same
    for value in torch.rand(200, generator=torch.Generator().manual_seed(0)).mul(tol).tolist():
        assert value <= float(format_value(Within(value, tol)).removeprefix("<= "))  # a bound, never a rounding
    assert format_value(Within(0.5, tol)) == "0.5"  # over the tolerance: the number itself
    assert format_value(Within(float("nan"), tol)) == "nan"
    assert format_value(Within(0.0, 0.0)) == "0"  # no tolerance to bound by: exact comparisons print exactly
    assert Within(6.7e-6, tol) == 6.7e-6 and Within(6.7e-6, tol) < tol  # the evidence keeps the measured value
    finding = Finding("kv_cache", "pass", "ok", {"max_abs_delta": Within(6.7e-6, tol), "tolerance": tol})
    assert finding.evidence_text() == "max_abs_delta=<= 3.0e-05, tolerance=0.00294"


def test_checks_selection_and_unknown_names():
    model = TransformerLM(ModelConfig.preset("tiny"))
    report = diagnose(model, checks=["kv_cache", "config"], progress=False)
    assert [f.check for f in report] == ["config", "kv_cache"]  # catalogue order
    assert report.statuses() == {"config": "pass", "kv_cache": "pass"}
    with pytest.raises(DoctorError) as err:
        diagnose(model, checks=["causal_leak", "flux_capacitor"], progress=False)
    assert isinstance(err.value, WorkbenchError)
    assert "flux_capacitor" in str(err.value) and all(name in str(err.value) for name in CHECK_NAMES)


def test_model_without_logits_is_refused():
    class Embedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = nn.Embedding(10, 4)

        def forward(self, input_ids):  # (B, T, C) features, not logits over a vocabulary
            return {"hidden": self.e(input_ids)}

    with pytest.raises(DoctorError, match="logits"):
        diagnose(Embedder(), progress=False)


def test_user_rng_and_grads_untouched():
    model, _, _ = ZOO["eval_dropout"]
    m = model()
    for p in m.parameters():
        p.grad = torch.full_like(p, 7.0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    diagnose(m, checks=["determinism", "gradients"], progress=False)
    assert torch.equal(torch.rand(3), expected)  # the user's RNG stream continues where it was
    assert all(bool((p.grad == 7.0).all()) for p in m.parameters())


def test_every_registered_check_is_in_the_catalogue_and_places_are_declared():
    from pathlib import Path

    import workbench.doctor as doctor_pkg
    from workbench.doctor.registry import catalogue, check

    sources = Path(doctor_pkg.__file__).parent.glob("checks_*.py")
    declared = sum(p.read_text().count("\n@check(") for p in sources)
    assert declared == len(CHECK_NAMES) == len(set(CHECK_NAMES))  # none left out of a report
    assert catalogue() == CHECK_NAMES
    places = [doctor_pkg.CHECKS[n].order for n in CHECK_NAMES]
    assert places == sorted(places)
    with pytest.raises(TypeError):
        check("unplaced", pitfall="p", fix="f")  # a check without a place does not even register
    with pytest.raises(DoctorError, match="taken by 'causal_leak'"):
        check("second_leak", order=doctor_pkg.CHECKS["causal_leak"].order, pitfall="p", fix="f")
    with pytest.raises(DoctorError, match="already registered"):
        check("config", order=10_000, pitfall="p", fix="f")
    assert "unplaced" not in doctor_pkg.CHECKS and "second_leak" not in doctor_pkg.CHECKS


@pytest.fixture
def registered_at_run_time():
    """A check registered after the doctor was imported (as a plug-in or a notebook registers one), removed after."""
    import workbench.doctor as doctor_pkg
    from workbench.doctor.registry import Result, check

    name = "vocabulary_is_even"
    assert name not in doctor_pkg.CHECK_NAMES

    def vocabulary_is_even(ctx):
        V = ctx.adapter.vocab_size
        return Result("pass" if V % 2 == 0 else "warn", f"the vocabulary holds {V} ids", {"vocab_size": V})

    order = max(c.order for c in doctor_pkg.CHECKS.values()) + 1
    check(name, order=order, pitfall="an odd vocabulary", fix="pad it to an even size")(vocabulary_is_even)
    try:
        yield name
    finally:
        doctor_pkg.unregister(name)


def test_a_check_registered_after_import_is_validated_selected_and_run(registered_at_run_time):
    import workbench.doctor as doctor_pkg

    name = registered_at_run_time
    assert doctor_pkg.catalogue()[-1] == name and doctor_pkg.CHECK_NAMES[-1] == name  # last by its place
    report = diagnose(TransformerLM(ModelConfig.preset("tiny")), checks=[name, "config"], progress=False)
    assert [f.check for f in report] == ["config", name]
    finding = report[name]
    assert (finding.status, finding.summary, finding.evidence) == ("pass", "the vocabulary holds 256 ids",
                                                                   {"vocab_size": 256})
    assert (finding.pitfall, finding.fix) == ("an odd vocabulary", "pad it to an even size")
    with pytest.raises(DoctorError, match="unknown check name"):  # unknown names are still refused
        diagnose(TransformerLM(ModelConfig.preset("tiny")), checks=[name, "flux_capacitor"], progress=False)


def test_an_unregistered_check_is_unknown_again(registered_at_run_time):
    import workbench.doctor as doctor_pkg

    name = registered_at_run_time
    spec = doctor_pkg.unregister(name)
    try:
        assert spec.name == name and name not in doctor_pkg.catalogue()
        with pytest.raises(DoctorError, match=f"unknown check name.*{name}"):
            diagnose(TransformerLM(ModelConfig.preset("tiny")), checks=[name], progress=False)
        with pytest.raises(DoctorError, match="no doctor check named"):
            doctor_pkg.unregister(name)
    finally:
        doctor_pkg.CHECKS[name] = spec  # the fixture removes it
