"""The README's API tour runs as written (its one placeholder path pointed at the real SmolLM2 GGUF)
and does what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
PLACEHOLDER = '"path/to/hf_or_workbench_dir_or_file.gguf"'


def _tour() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python tour; update this test if that changes"
    assert PLACEHOLDER in blocks[0]
    return blocks[0].replace(PLACEHOLDER, "str(wb.models.smollm2_path())")


def test_readme_tour_runs_and_its_comments_hold(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the tour writes out/, run.trace and report.html
    ns: dict = {}
    exec(compile(_tour(), str(README), "exec"), ns)
    wb, model, tok, ids = ns["wb"], ns["model"], ns["tok"], ns["ids"]
    assert ns["logits"].shape == (1, ids.shape[1], model.config.vocab_size)
    assert "Total params: 134,515,008" in capsys.readouterr().out  # tr.summary() printed, tied weights once
    # save_pretrained(format="hf") wrote a checkpoint that loads back to the same logits
    again = wb.load_pretrained(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=1e-5, rtol=0)
    loaded = wb.Trace.load(tmp_path / "run.trace")
    assert len(loaded.records) > 600 and len(loaded.attention) == model.config.n_layers
    assert (tmp_path / "report.html").stat().st_size > 100_000  # plotly.js inline
    assert ns["out"].new_tokens.shape == (1, 20)
    assert ns["record"].cache_length == len(tok.encode("The capital of France is")) + 1
    assert ns["steered"].new_tokens.shape == (1, 5) and wb.lm.edits.active_edits(model) == ()
    assert ns["session"].edit_labels == (ns["steer"].label,) and ns["steer"].label.startswith("Add(module=blocks.10")
    report = ns["report"]
    assert "# every check in CHECK_NAMES" in README.read_text()
    assert [f.check for f in report] == list(wb.doctor.CHECK_NAMES) and report.ok
    assert len(ns["history"]) == 1
