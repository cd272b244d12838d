"""Where cells run: inline in this process, or one submitit job per cell (local or Slurm), and the
sweep command's side of it. Imports ``experiment`` and ``results``, never ``commands``."""
