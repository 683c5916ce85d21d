"""Compare an implementation with a reference: weights by value, activations at aligned points, the cause."""

from .comparison import Comparison, PartialComparison, compare
from .weights import WeightMatch, WeightTable, match_weights

__all__ = ["Comparison", "PartialComparison", "WeightMatch", "WeightTable", "compare", "match_weights"]
