"""What people look at: report.md and report.html, the plots, robustness curves and position studies.
Reads the run folder (``experiment``); imports nothing from ``execution`` or ``commands``."""
