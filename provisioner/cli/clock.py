"""How long this process has run: the wall time a user waits, start-up and imports included.

A no-op `up` spends as long starting Python and importing its libraries as talking to the host,
so the figure `up` reports starts when the process did (Linux: ``/proc/self/stat`` start time
against ``CLOCK_BOOTTIME``, both since boot), not when the command body began.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: fallback start: when this module was first imported (the CLI imports it first)
_IMPORTED = time.monotonic()


def since_start() -> float:
    """Seconds since the process started (since this module's import where /proc cannot tell)."""
    try:
        after = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after[19])  # field 22 (starttime), counting from field 3 (state) = index 0
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED


__all__ = ["since_start"]
