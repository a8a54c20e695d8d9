"""`provision doctor`: check the whole chain and say what is wrong and how to fix it.

Layout: ``facts.py`` (the few facts only doctor needs), ``checks_<area>.py`` (pure functions
``DoctorContext -> list[Finding]`` for access, host, container, driver, cuda, dns, services),
``probes.py`` (HTTP to the gateway, in parallel), ``gguf.py`` (model metadata for the KV-cache
estimate), ``runner.py`` (gather in one SSH round trip and run every check), ``fixes.py`` (the
safe fixes, reusing the steps that own each thing), ``findings.py`` (the report and exit code).

Exit code: 0 when no finding fails, 1 when one does; warnings alone exit 0, or 1 with
``--strict``. A bad host file exits 2 like every command.
"""

from .findings import DoctorReport, Evidence, Finding, exit_code
from .runner import diagnose

__all__ = ["DoctorReport", "Evidence", "Finding", "diagnose", "exit_code"]
