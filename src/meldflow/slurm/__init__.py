"""SLURM: job states, the executor plugin's fixes, accounting, `meldflow status`
(``status_report``), orphaned jobs."""
