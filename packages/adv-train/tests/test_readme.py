"""The README's Python examples run as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no ```python example"
    monkeypatch.chdir(tmp_path)  # anything the example writes stays in a temporary folder
    for i, code in enumerate(blocks):
        exec(compile(code, f"{README.name}[python block {i}]", "exec"), {"__name__": "__readme__"})
