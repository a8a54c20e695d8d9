"""apt and dpkg inside the container, safely: the shell prelude every apt script starts with.

The prelude (``templates/apt/prelude.sh.j2``) defines two bash functions:

- ``apt_get ARGS...`` — waits while another process holds an apt/dpkg lock
  (``/var/lib/dpkg/lock-frontend``, ``/var/lib/dpkg/lock``, ``/var/lib/apt/lists/lock``),
  printing ``provision: waiting for the dpkg lock held by PID N (cmd) on FILE``, and gives
  up after the timeout (exit 75) with a message naming the holder; finishes an
  interrupted dpkg first; then runs apt-get non-interactively, keeping changed conffiles.
- ``dpkg_recover`` — the waiting and recovery part alone (call it before ``dpkg -i``).

Usage in an operation::

    script = apt.prelude_for(actx.cfg) + "set -e\\napt_get update -q\\napt_get install -y foo\\n"
    actx.ct().run(script, on_line=apt.on_line(actx))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..templating import render

if TYPE_CHECKING:
    from ..config.schema import HostFile
    from ..engine.context import ApplyContext

DEFAULT_LOCK_TIMEOUT = 300
#: the exit code of apt_get / dpkg_recover when the lock stayed held (EX_TEMPFAIL)
LOCK_TIMEOUT_EXIT = 75
WAITING = "provision: waiting for the dpkg lock held by "


def prelude(lock_timeout: int = DEFAULT_LOCK_TIMEOUT) -> str:
    """The bash prelude defining ``apt_get`` and ``dpkg_recover`` (ends with a newline)."""
    return render("apt/prelude.sh.j2", lock_timeout=int(lock_timeout))


def prelude_for(cfg: "HostFile") -> str:
    """The prelude with the lock timeout from the host file (``container.apt_lock_timeout``)."""
    return prelude(getattr(cfg.container, "apt_lock_timeout", DEFAULT_LOCK_TIMEOUT))


def on_line(actx: "ApplyContext") -> Callable[[str], None]:
    """An ``on_line`` callback: log every line, and show lock waits as the step's status."""
    def forward(line: str) -> None:
        if line.startswith(WAITING):
            actx.status(line.removeprefix("provision: "))
        actx.log(line)
    return forward


__all__ = ["DEFAULT_LOCK_TIMEOUT", "LOCK_TIMEOUT_EXIT", "on_line", "prelude", "prelude_for"]
