"""Printing results: human text or ``--json``."""
from __future__ import annotations

import json
import math

import click


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (one document on stdout) or ``text`` for people.

    Keys keep their order (cells in grid order, as the tables list them)."""
    click.echo(json.dumps(_jsonable(result), indent=2) if as_json else text)
