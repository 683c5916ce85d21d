"""Generation: `generate` (greedy, sampling, beam search) and the stepwise `GenerationSession`, both driven by
one `GenerationRequest` of decoding settings."""

from .generate import generate
from .records import GenerationOutput, StepRecord
from .request import GenerationRequest
from .sampling import entropy, process_logits
from .session import GenerationSession

__all__ = [
    "GenerationOutput",
    "GenerationRequest",
    "GenerationSession",
    "StepRecord",
    "entropy",
    "generate",
    "process_logits",
]
