"""Analyses of merged models: LMC curves (:mod:`~workbench.analysis.lmc`), loss planes,
sweeps over a setting, diagnostics of the matching, method comparisons, and the engine that
evaluates many points of weight space on one working model."""
