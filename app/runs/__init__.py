"""Run directories: what train.py and evaluate.py write and the report reads.

metrics.py    metrics.json's schema (RunMetrics), its writer and reader; no torch import
directory.py  the run directory: atomic checkpoints, wall time, resume checks, whole-split evaluation
averaging.py  checkpoint averaging of a run's best epochs (task.average_best)
sweeps.py     resumable sweeps: a finished point is not trained again

This package's __init__ imports nothing, so `app.runs.metrics` loads without torch.
"""
