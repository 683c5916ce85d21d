"""The command line: subcommands print real content, exit codes follow the findings, errors are one line."""

from __future__ import annotations

import os
import re

import pytest
import torch

import workbench as wb
from workbench.cli import main


def test_trace_prints_summary_of_tiny(capsys):
    assert main(["trace", "tiny", "--prompt", "the cat sat on the mat", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "lm_head (Linear)" in out and "(1, 7, 512)" in out
    assert "Total params: 98,496" in out


def test_doctor_exit_codes(tmp_path, capsys):
    torch.manual_seed(0)
    model = wb.TransformerLM(wb.ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.blocks[1].attn.out.weight.fill_(float("nan"))
    wb.save_pretrained(model, tmp_path)
    assert main(["doctor", str(tmp_path), "--quiet", "--checks", "nonfinite", "config"]) == 1
    out = capsys.readouterr().out
    assert "nonfinite" in out and "blocks.1" in out
    assert main(["doctor", "tiny", "--quiet", "--checks", "causal_leak", "config"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["trace", "/no/such/model", "--prompt", "x"], "neither a model name"),
        (["trace", "tiny", "--prompt", "   "], "--prompt is empty"),
        (["doctor", "tiny", "--quiet", "--checks", "nope"], "nope"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unsupported_format_is_one_line(tmp_path, capsys):
    (tmp_path / "weights.onnx").write_bytes(b"\x00" * 16)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert main(["trace", str(tmp_path / "weights.onnx"), "--prompt", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def test_report_writes_standalone_html(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", "tiny", "--prompt", "the cat sat on the mat", "--out", str(out)]) == 0
    html = out.read_text()
    assert "plotly" in html.lower() and "blocks.1.attn" in html
    assert re.search(r"<script[^>]+src=\"https?:", html) is None  # plotly.js inline, no CDN
    assert str(out) in capsys.readouterr().out


def test_lab_starts_jupyterlab_on_loopback(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("workbench.cli.subprocess.call", lambda cmd: calls.append(cmd) or 0)
    assert main(["lab", "--dir", str(tmp_path), "--port", "8899"]) == 0
    (cmd,) = calls
    assert cmd[1] == "lab" and "--ip=127.0.0.1" in cmd and "--port=8899" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={tmp_path.resolve()}" in cmd
    assert ("--allow-root" in cmd) == (os.geteuid() == 0)  # jupyter refuses to start as root without it
    assert main(["lab", "--dir", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# --- issue 17: failures are one line; a bug says it is one, with the traceback only under --debug ---------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["trace", "tiny", "--prompt", "x", "--device", "bogus"], "device='bogus' is not a device name"),
        (["trace", "tiny", "--prompt", "x", "--device", "cuda:7"], "cuda:7"),
    ],
)
def test_bad_devices_are_one_line(argv, message, capsys):
    if "cuda" in argv[-1] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_negative_depth_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "tiny", "--prompt", "x", "--depth", "-1"])
    assert exit_info.value.code == 2 and "--depth" in capsys.readouterr().err


def _broken_trace(monkeypatch):
    import workbench.cli_commands as commands

    def boom(spec, device=None):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(commands, "resolve_model", boom)


def test_an_unexpected_exception_is_reported_as_a_bug_without_traceback(monkeypatch, capsys):
    _broken_trace(monkeypatch)
    assert main(["trace", "tiny", "--prompt", "x"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error (RuntimeError: kaput)" in err and "bug in workbench" in err and "--debug" in err


def test_debug_prints_the_traceback(monkeypatch, capsys):
    _broken_trace(monkeypatch)
    assert main(["trace", "tiny", "--prompt", "x", "--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "kaput" in err and "bug in workbench" in err
    monkeypatch.undo()
    assert main(["trace", "/no/such/model", "--prompt", "x", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("workbench trace: error:")


def test_ctrl_c_exits_130(monkeypatch, capsys):
    import workbench.cli_commands as commands

    def interrupted(spec, device=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "resolve_model", interrupted)
    assert main(["trace", "tiny", "--prompt", "x"]) == 130
    assert "interrupted" in capsys.readouterr().err


# --- an output file that cannot be written is bad input (exit 2) naming the path, not a bug ----------------
WRITERS = {  # command -> (its arguments before the output option, the option)
    "report": (["report", "tiny", "--prompt", "the cat sat"], "--out"),
    "compare": (["compare", "tiny", "tiny"], "--html"),
}


def _unwritable(tmp_path, kind):
    """(path, reason) for each way an output path cannot be written, even as root."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    (tmp_path / "taken.html").mkdir()
    return {
        "under-a-file": (blocker / "out.html", f"{blocker} is a file, not a directory"),
        "missing-folder-under-a-file": (blocker / "missing" / "out.html", f"{blocker} is a file, not a directory"),
        "a-directory": (tmp_path / "taken.html", "it is a directory"),
        "name-too-long": (tmp_path / ("x" * 300 + ".html"), "File name too long"),
    }[kind]


@pytest.mark.parametrize("kind", ["under-a-file", "missing-folder-under-a-file", "a-directory", "name-too-long"])
@pytest.mark.parametrize("command", WRITERS)
def test_an_unwritable_output_path_is_refused_before_a_model_loads(command, kind, tmp_path, monkeypatch, capsys):
    import workbench.cli_commands as commands

    def no_model(spec, device=None):
        raise RuntimeError("a model was loaded before the output path was checked")

    monkeypatch.setattr(commands, "resolve_model", no_model)
    path, reason = _unwritable(tmp_path, kind)
    argv, option = WRITERS[command]
    assert main([*argv, option, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"workbench {command}: error: cannot write {option} {path}: {reason};" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_output_folder_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "report.html"
    assert main(["report", "tiny", "--prompt", "the cat sat", "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("command", WRITERS)
def test_a_write_that_fails_is_bad_input(command, tmp_path, monkeypatch, capsys):
    """A failure no check can foresee (a full disk) while the file is written: exit 2 with the path and reason."""
    import errno

    import workbench.viz.report as report
    from workbench.compare.comparison import Comparison

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "report_html", full_disk)
    monkeypatch.setattr(Comparison, "save_html", full_disk)
    out = tmp_path / "out.html"
    argv, option = WRITERS[command]
    assert main([*argv, option, str(out)]) == 2
    err = capsys.readouterr().err
    assert f"workbench {command}: error: cannot write {option} {out}: No space left on device;" in err
