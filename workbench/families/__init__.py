"""Model families as plug-ins: one module per family, declared through `registry.register`.

Importing this package registers the built-in families (GPT-2, Llama, Qwen2, Gemma). A new family
is one module like `llama.py` that builds a `Family` and registers it; the loaders and savers in
`workbench.io` find it through the lookups below; `config_from_hf` / `config_to_hf` translate HF configs
through them.
"""

from . import gemma, gpt2, llama, qwen2  # noqa: F401 (registers the built-in families)
from .hf_config import config_from_hf, config_to_hf, hf_architecture
from .registry import (
    Family,
    GGUFSpec,
    RowPermutation,
    for_config,
    for_gguf_arch,
    for_hf_model_type,
    get,
    register,
    registered,
    row_permutation,
    row_permutations,
    unregister,
)

__all__ = [
    "Family", "GGUFSpec", "config_from_hf", "config_to_hf", "for_config", "for_gguf_arch", "for_hf_model_type", "get",
    "hf_architecture", "register", "registered", "row_permutation", "row_permutations", "RowPermutation", "unregister",
]
