"""The `workbench doctor | trace | report | compare` subcommands: load a model by name or path, then act on it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, LoadError, OutputPathError, WorkbenchError
from .model.placement import module_device

NAMED_MODELS = ("smollm2", "tiny")


@dataclass(frozen=True)
class OutputFile:
    """A file a command writes (`report --out`, `compare --html`). `checked` refuses a path that cannot be
    written before any model is loaded; `write` turns an OSError of the write itself (a full disk) into an
    OutputPathError too. Either is bad input, exit code 2, with the path and the reason."""

    option: str  # the command-line option that named it
    path: Path

    @classmethod
    def checked(cls, option: str, text: str) -> OutputFile:
        out = cls(option, Path(text).expanduser())
        try:
            problem = out._problem()
        except OSError as exc:  # a name the system refuses outright (too long, ...)
            problem = exc.strerror or str(exc)
        if problem:
            raise out._error(problem)
        return out

    def _problem(self) -> str | None:
        """Why the file cannot be written, or None. Missing folders are fine: the writers create them."""
        if self.path.is_dir():
            return "it is a directory"
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            return f"{folder} is a file, not a directory"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"permission denied in {folder}"
        return None

    def write(self, writer: Callable[[Path], Path]) -> Path:
        try:
            return writer(self.path)
        except OSError as exc:
            raise self._error(exc.strerror or str(exc)) from exc

    def _error(self, reason: str) -> OutputPathError:
        return OutputPathError(f"cannot write {self.option} {self.path}: {reason}; give a file path in a folder "
                               "you can write to.")


def resolve_model(spec: str, device: str | None = None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer or None) for "smollm2", "tiny", or anything `load_pretrained` accepts."""
    from . import models
    from .io.load import load_pretrained
    from .io.load_tokenizer import load_tokenizer

    if spec in NAMED_MODELS:
        return getattr(models, spec)(device=device)
    path = Path(spec).expanduser()
    if not path.exists():
        raise LoadError(f"{spec} is neither a model name ({', '.join(NAMED_MODELS)}) nor an existing path.")
    model = load_pretrained(path, device=device)
    try:
        tokenizer = load_tokenizer(path)
    except LoadError:
        tokenizer = None
    return model, tokenizer


def encode_prompt(tokenizer: Any, prompt: str, device: torch.device) -> torch.Tensor:
    if tokenizer is None:
        raise LoadError("no tokenizer was found beside the model; put tokenizer.json next to the weights.")
    if not prompt.strip():
        raise InputError("--prompt is empty; pass some text, e.g. --prompt 'The capital of France is'.")
    return tokenizer(prompt)["input_ids"].to(device)


def _device(model: torch.nn.Module) -> torch.device:
    return module_device(model)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    model, tokenizer = resolve_model(args.path, args.device)
    report = diagnose(model, tokenizer, checks=args.checks or None, progress=not args.quiet)
    print(report)
    return 1 if report is not None and report.failed else 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .capture import trace

    model, tokenizer = resolve_model(args.path, args.device)
    ids = encode_prompt(tokenizer, args.prompt, _device(model))
    with torch.no_grad(), trace(model, memory=True) as tr:
        model(ids)
    print(tr.summary(max_depth=args.depth))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .capture import trace
    from .viz.report import report_html

    out_file = OutputFile.checked("--out", args.out)
    model, tokenizer = resolve_model(args.path, args.device)
    ids = encode_prompt(tokenizer, args.prompt, _device(model))
    with trace(model, memory=True, attention=True, gradients=True) as tr:
        logits = model(ids)
        logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).mean().neg().backward()
    model.zero_grad(set_to_none=True)
    out = out_file.write(lambda path: report_html(tr, path, tokens=tokenizer.token_strings(ids[0])))
    print(f"wrote {out}")
    return 0


def resolve_reference(spec: str, device: str | None = None) -> torch.nn.Module:
    """A model for `compare`: "hf:PATH" (or "hf:smollm2") loads it with transformers, anything else as
    `resolve_model` does."""
    if not spec.startswith("hf:"):
        return resolve_model(spec, device)[0]
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        from .errors import MissingDependencyError

        raise MissingDependencyError("hf:... models need transformers; pip install transformers.") from exc
    from . import models

    path = models.smollm2_path() if spec == "hf:smollm2" else Path(spec[3:]).expanduser()
    if not path.exists():
        raise LoadError(f"{spec[3:]} does not exist; give hf:FOLDER, hf:FILE.gguf or hf:smollm2.")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if path.suffix == ".gguf":
        path, kwargs["gguf_file"] = path.parent, path.name
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device or "cpu").eval()


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    html = OutputFile.checked("--html", args.html) if args.html else None
    result = compare(resolve_reference(args.reference, args.device), resolve_reference(args.candidate, args.device),
                     patching=args.patching)
    print(result.summary())
    if html is not None:
        print(f"wrote {html.write(result.save_html)}")
    return 0 if result.equivalent else 1


def _depth(text: str) -> int:
    """--depth: an integer >= 0 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register doctor, trace and report on the top-level parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("path", help="model: smollm2, tiny, a checkpoint folder, or a .gguf/.safetensors file")
    common.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    common.add_argument("--debug", action="store_true", help="print the traceback of an error")
    doctor = sub.add_parser("doctor", parents=[common], help="diagnose implementation pitfalls; exit 1 on a fail")
    doctor.add_argument("--checks", nargs="*", help="run only these checks")
    doctor.add_argument("--quiet", action="store_true", help="no progress bar")
    doctor.set_defaults(func=cmd_doctor)
    tr = sub.add_parser("trace", parents=[common], help="print the per-module summary table of one forward")
    tr.add_argument("--prompt", required=True)
    tr.add_argument("--depth", type=_depth, default=None, help="deepest module level to show (0 = the model)")
    tr.set_defaults(func=cmd_trace)
    rep = sub.add_parser("report", parents=[common], help="write a standalone HTML report of one forward+backward")
    rep.add_argument("--prompt", required=True)
    rep.add_argument("--out", default="report.html")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser("compare", help="find where CANDIDATE diverges from REFERENCE and why; exit 1 on divergence",
                         description="Models: smollm2, tiny, a checkpoint folder or file; prefix hf: to load it "
                                     "with transformers instead (hf:smollm2, hf:FOLDER, hf:FILE.gguf).")
    cmp.add_argument("reference")
    cmp.add_argument("candidate")
    cmp.add_argument("--html", default=None, help="also write the report to this .html file")
    cmp.add_argument("--patching", action="store_true",
                     help="also patch each aligned point's reference activation into the candidate and report the "
                          "share of the logit gap it closes (one candidate forward per point)")
    cmp.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    cmp.add_argument("--debug", action="store_true", help="print the traceback of an error")
    cmp.set_defaults(func=cmd_compare)


EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 2, 3, 130


def run(args: argparse.Namespace) -> int:
    """Run a subcommand. A WorkbenchError (bad input) is one line on stderr and exit code 2; any other
    exception is a bug in the workbench: a short message and exit code 3, with the traceback only under
    --debug. Ctrl-C exits with 130."""
    import sys
    import traceback

    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args) or 0)
    except WorkbenchError as exc:
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"workbench {args.command}: error: {first}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything else is our bug: say so, without a wall of traceback
        if debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = "report it" if debug else "rerun with --debug for the traceback and report it"
        print(f"workbench {args.command}: internal error ({type(exc).__name__}: {first}). This is a bug in "
              f"workbench, not in your input; {hint} with the command you ran.", file=sys.stderr)
        return EXIT_BUG
