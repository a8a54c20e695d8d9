"""Rendering our templates with the filters shell and systemd files need, and running scripts.

``shq`` quotes a value for bash; ``sdq`` quotes one word of a systemd ``ExecStart=``.
Scripts run on the host (``bash -s`` over SSH) or in the container (``pct exec``);
either way the script travels on stdin, so secrets embedded in it never reach argv.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

from ..connectors.ssh import Result
from ..engine.context import ApplyContext
from ..templating import _env
from ..templating import render as _render

_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_./:=,+@-]+$")


def systemd_quote(word: str) -> str:
    """Quote one argument for ``ExecStart=`` (systemd.service(5) "Command lines")."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_PLAIN.match(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(name: str, **values: Any) -> str:
    """``templating.render`` with our filters registered on the shared environment."""
    env = _env()
    if "shq" not in env.filters:
        env.filters["shq"] = lambda v: shlex.quote(str(v))
        env.filters["sdq"] = lambda v: systemd_quote(str(v))
        env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=False)
    return _render(name, **values)


Runner = Callable[..., Result]


def runner(actx: ApplyContext, where: str) -> Runner:
    """A function running a bash script on the host (``"host"``) or in the container (``"ct"``)."""
    if where == "ct":
        ct = actx.ct()
        return lambda script, **kw: ct.run(script, **kw)
    return lambda script, **kw: actx.ssh.run("bash -s", stdin=script.encode(), **kw)
