"""Pruning harness: masks, pruning rules, IMP with rewinding, prunability."""

from .masks import Masks, prunable_parameters

__all__ = ["Masks", "prunable_parameters"]
