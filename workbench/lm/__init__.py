"""Any causal LM: how to call it (`ModelAdapter`) and its KV cache behind one interface (`ForeignCache`)."""

from .adapter import ModelAdapter, NonFiniteLogits, config_value, extract_logits, is_norm
from .caches import ForeignCache, cache_bytes, cache_tensors, returned_cache

__all__ = ["ForeignCache", "ModelAdapter", "NonFiniteLogits", "cache_bytes", "cache_tensors", "config_value",
           "extract_logits", "is_norm", "returned_cache"]
