"""One file per command; ``COMMANDS`` is what the group registers."""
from .analyze import analyze
from .bench import bench
from .certify import certify
from .convert import convert
from .eval import eval_command
from .info import info
from .report import report
from .run import run
from .status import status
from .study import study_group
from .sweep import sweep

COMMANDS = [run, eval_command, sweep, status, report, analyze, certify, convert, bench, info, study_group]
