"""Model families as plug-ins: one module per family, declared through `registry.register`.

Importing this package registers the built-in families (GPT-2, Llama, Qwen2, Gemma). A new family
is one module like `llama.py` that builds a `Family` and registers it; the loaders and savers in
`workbench.io` and `workbench.model.hf_config` find it through the lookups below.
"""

from . import gemma, gpt2, llama, qwen2  # noqa: F401 (registers the built-in families)
from .registry import (
    Family,
    GGUFSpec,
    for_config,
    for_gguf_arch,
    for_hf_model_type,
    get,
    register,
    registered,
    unregister,
)

__all__ = [
    "Family", "GGUFSpec", "for_config", "for_gguf_arch", "for_hf_model_type", "get", "register", "registered",
    "unregister",
]
