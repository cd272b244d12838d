"""The experiment pipeline: the spec resolved into cells, the run folder and each cell's folder, training
a cell and its final evaluation. Imports nothing from ``results``, ``execution`` or ``commands``."""
