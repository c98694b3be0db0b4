"""Fair comparisons of runs, from what the tracking store holds.

Owns a run's per-epoch history read back (``history``), its energy, emissions and time to reach a target top-1
(``to_target``), the repeats of one cell (runs that differ only in their seed) summarised with Student's t
intervals (``repeats``), and an external power meter's samples lined up with a run's window and epochs (``meter``).
May import ``eemlflow.measure`` (units), ``eemlflow.store`` (keys, rows), MLflow, pandas, numpy and scipy; nothing of
the training loop, the sweep, the report or the command lines.
"""
