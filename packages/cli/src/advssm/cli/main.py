"""The ``advssm`` command group: global ``--debug`` and the exit-code contract.

Exit codes: 0 success; 2 usage or configuration error; 1 runtime error, reported in one line
(a traceback only with ``--debug``); 130 interrupted with Ctrl-C.
"""
from __future__ import annotations

import warnings

import click

from ._version import __version__
from .commands import COMMANDS
from .errors import ConfigError


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if isinstance(exc, (ConfigError, ValueError, RuntimeError)) else f"{exc.__class__.__name__}: {text}"


class AdvssmGroup(click.Group):
    """Turns exceptions into the exit-code contract above."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1, which reads like a failure; 130 is the shell's Ctrl-C code
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)
        except ConfigError as exc:
            if ctx.params.get("debug"):
                raise
            raise click.UsageError(_one_line(exc)) from exc
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(_one_line(exc) + " (rerun with --debug for a traceback)") from exc


@click.group(cls=AdvssmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(__version__, prog_name="advssm")
def cli(debug: bool) -> None:
    """Adversarial robustness of deep state space models (arXiv 2406.05532).

    \b
    Examples:
      advssm run                       # ST vs PGD-AT on the bundled digits, a few minutes on a CPU
      advssm run exp.toml --epochs 5   # a TOML experiment, flags override it
      advssm eval runs/X/pgd-at/best.safetensors --attacks pgd,aa
      advssm sweep grid.toml           # models x methods x AdS x data sets
      advssm report runs/A runs/B      # one table and plot across runs
      advssm analyze runs/X/pgd-at/best.safetensors
      advssm bench --quick             # kernel timings
      advssm info                      # versions, backends, device

    Run `advssm COMMAND --help` for a command's options and examples.
    """
    # a warning (a resume in another environment, a changed lr) reads as one line, not a source location
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="advssm")


if __name__ == "__main__":
    main()
