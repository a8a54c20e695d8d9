"""Render the files we write on hosts and in containers from ``templates/``."""

from __future__ import annotations

import json
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,+@-]+$")


def systemd_quote(word: str) -> str:
    """Quote one argument for ``ExecStart=`` (systemd.service(5) "Command lines")."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_PLAIN.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def templates_dir() -> Path:
    """``provisioner/_templates`` in an installed wheel, ``templates/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the templates directory is missing from this installation")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    # every value that lands in a shell script or a unit goes through one of these
    env.filters["shq"] = lambda v: shlex.quote(str(v))
    env.filters["sdq"] = lambda v: systemd_quote(str(v))
    env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=False)
    return env


def render(name: str, **values: Any) -> str:
    """Render ``templates/<name>`` with ``values``; a missing value is an error, not a blank."""
    return _env().get_template(name).render(**values)
