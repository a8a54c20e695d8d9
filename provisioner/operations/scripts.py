"""Rendering our templates with the filters shell and systemd files need, and running scripts.

``shq`` quotes a value for bash; ``sdq`` quotes one word of a systemd ``ExecStart=``.
Scripts run on the host (``bash -s`` over SSH) or in the container (``pct exec``);
either way the script travels on stdin, so secrets embedded in it never reach argv.
"""

from __future__ import annotations

from collections.abc import Callable

from ..connectors.ssh import Result
from ..engine.context import ApplyContext
from ..templating import render, systemd_quote  # noqa: F401 - the steps import them from here

Runner = Callable[..., Result]


def runner(actx: ApplyContext, where: str) -> Runner:
    """A function running a bash script on the host (``"host"``) or in the container (``"ct"``)."""
    if where == "ct":
        ct = actx.ct()
        return lambda script, **kw: ct.run(script, **kw)
    return lambda script, **kw: actx.ssh.run("bash -s", stdin=script.encode(), **kw)
