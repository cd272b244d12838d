"""The README's shell examples stay true: every ``advssm ...`` line names a real command and real options.

The quick start itself (``advssm run`` with no arguments) is run for real by test_demo.py.
"""
import re
import shlex
from pathlib import Path

import click
from advssm.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _advssm_lines():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    for block in blocks:
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("advssm"):
                yield shlex.split(line)


def _options(command: click.Command) -> set[str]:
    return {name for p in command.params for name in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def test_readme_commands_exist_with_their_options():
    lines = list(_advssm_lines())
    assert len(lines) >= 5
    for words in lines:
        args = words[1:]
        group_options = [a for a in args[:1] if a.startswith("-")]
        assert not group_options or group_options[0] in _options(cli), words
        command = cli.commands.get(args[0]) if args else None
        assert command is not None, f"README runs an unknown command: {' '.join(words)}"
        used = {a.split("=")[0] for a in args[1:] if a.startswith("--")}
        unknown = used - _options(command)
        assert not unknown, f"README uses options that `advssm {args[0]}` lacks: {sorted(unknown)} in {words}"


def test_the_guide_s_default_toml_is_what_dry_run_prints(helpers):
    """docs/guide/run.md shows the default TOML as `advssm run --dry-run` prints it; a setting added to a library's
    config shows up there, so the page is kept equal to it."""
    page = (Path(__file__).resolve().parents[3] / "docs" / "guide" / "run.md").read_text()
    layout = page[page.index("## The TOML layout"):]
    shown = re.search(r"```toml\n(.*?)```", layout, flags=re.S).group(1)
    result = helpers.invoke("run", "--dry-run")
    assert result.exit_code == 0 and result.output.strip() == shown.strip()
