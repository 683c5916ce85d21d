"""Generation: `generate` (greedy, sampling, beam search) and the stepwise `GenerationSession`."""

from .generate import generate
from .records import GenerationOutput, StepRecord
from .sampling import Strategy, entropy, process_logits
from .session import GenerationSession

__all__ = ["GenerationOutput", "GenerationSession", "StepRecord", "Strategy", "entropy", "generate", "process_logits"]
