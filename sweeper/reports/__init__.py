"""Everything that ranks and reports results: the sweep's tables (summary_tables), the
leaderboard, Pareto fronts and plots, the GLUE seed table, W&B set-up and logging, and the
offline W&B reader. The engine (sweep.py) depends on this package, never the other way
round; nothing here is imported eagerly (plots import matplotlib)."""
