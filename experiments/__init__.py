"""Experiment scripts reproducing the three source papers' findings (see README "Results")."""
