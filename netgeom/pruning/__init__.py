"""Pruning harness: masks, pruning rules, IMP with rewinding, prunability, resumable runs, sweeps."""

from .imp import IMP, IMPConfig, IMPLevel, IMPResult, demo_imp, imp_main, parse_rewind
from .masks import Masks, prunable_parameters
from .prunability import PrunabilityResult, prunability
from .rules import UnreachableSparsityError, magnitude_prune, random_prune
from .runs import CodeMismatchError, RunDir, code_identity, description_hash
from .sweeps import grid, map_levels, run_sweep

__all__ = [
    "CodeMismatchError",
    "IMP",
    "IMPConfig",
    "IMPLevel",
    "IMPResult",
    "Masks",
    "PrunabilityResult",
    "RunDir",
    "UnreachableSparsityError",
    "code_identity",
    "demo_imp",
    "description_hash",
    "grid",
    "imp_main",
    "magnitude_prune",
    "map_levels",
    "parse_rewind",
    "prunability",
    "prunable_parameters",
    "random_prune",
    "run_sweep",
]
