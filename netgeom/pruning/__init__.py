"""Pruning harness: masks, pruning rules, IMP with rewinding, prunability, resumable runs, sweeps."""

from .imp import IMP, IMPConfig, IMPLevel, IMPResult, demo_imp, imp_main, parse_rewind, read_run
from .masks import Masks, prunable_parameters
from .prunability import PrunabilityResult, prunability
from .rules import UnreachableSparsityError, magnitude_prune, random_prune
from .runs import (
    CodeMismatchError,
    CorruptRunFileError,
    IncompleteRunError,
    RunDir,
    code_identity,
    description_hash,
)
from .sweeps import grid, map_levels, read_sweep, run_sweep

__all__ = [
    "CodeMismatchError",
    "CorruptRunFileError",
    "IMP",
    "IMPConfig",
    "IMPLevel",
    "IMPResult",
    "IncompleteRunError",
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
    "read_run",
    "read_sweep",
    "run_sweep",
]
