"""Model families as plug-ins: one module per family, declared through `registry.register`.

Importing this package imports every module in it, and each family module registers its `Family`
when imported (the helpers beside them, `naming`, `hf_common`, ..., register nothing). So a new
built-in family is one new module like `llama.py`, with no list to extend; a family outside the
package calls `register` itself. The loaders and savers in `workbench.io` find families through the
lookups below; `config_from_hf` / `config_to_hf` translate HF configs through them.
"""

import importlib
import pkgutil

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


def _import_modules() -> None:
    """Import every module of this package, in name order: each family module registers its family."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_modules()

__all__ = [
    "Family", "GGUFSpec", "RowPermutation", "config_from_hf", "config_to_hf", "for_config", "for_gguf_arch",
    "for_hf_model_type", "get", "hf_architecture", "register", "registered", "row_permutation", "row_permutations",
    "unregister",
]
