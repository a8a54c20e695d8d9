"""The one exception tree of the project.

Errors of the libraries underneath (paramiko, proxmoxer/requests, aiohttp) are
translated into these exactly once, in the connector that uses the library,
with ``raise ... from exc``. Every error carries the context a user needs: the
host, the container, the step. Messages never contain secrets (see
``provisioner.redact``).

Exit codes (see ``provisioner.cli``): ConfigError → 2, any other ProvisionError → 1,
anything else is a bug → 1 with a traceback written to a log file.
"""

from __future__ import annotations


class ProvisionError(Exception):
    """Base of every error the tool reports to a user (as opposed to a bug)."""

    #: one line that tells the user what to do about it, shown after the message
    fix: str | None = None

    def __init__(self, message: str, *, fix: str | None = None, host: str | None = None,
                 vmid: int | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if fix is not None:
            self.fix = fix
        self.host = host
        self.vmid = vmid
        self.step = step

    def where(self) -> str:
        parts = []
        if self.host:
            parts.append(f"host {self.host}")
        if self.vmid is not None:
            parts.append(f"CT {self.vmid}")
        if self.step:
            parts.append(f"step {self.step}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(ProvisionError):
    """The host file (or a command-line argument) is wrong. Exit code 2."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.file = file
        self.line = line
        self.key = key

    def __str__(self) -> str:
        loc = ""
        if self.file:
            loc = self.file + (f":{self.line}" if self.line else "")
        head = f"{loc}: " if loc else ""
        if self.key:
            head += f"{self.key}: "
        text = head + self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigErrors(ConfigError):
    """Several config errors at once, so the user fixes them in one go."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class RemoteError(ProvisionError):
    """A command on the Proxmox host or in the container failed, or SSH did."""

    def __init__(self, message: str, *, command: str | None = None, exit_code: int | None = None,
                 output: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.command = command
        self.exit_code = exit_code
        self.output = output

    def __str__(self) -> str:
        text = super().__str__()
        if self.output:
            tail = "\n".join(self.output.rstrip().splitlines()[-15:])
            text += "\n  output (tail):\n" + "\n".join("    " + ln for ln in tail.splitlines())
        return text


class SSHError(RemoteError):
    """SSH itself failed: connect, auth, host key, dropped connection."""


class HostKeyError(SSHError):
    """The host key is unknown or does not match known_hosts."""


class ProxmoxError(ProvisionError):
    """The Proxmox API answered with an error, or a task failed."""

    def __init__(self, message: str, *, status: int | None = None, errors: dict | None = None,
                 **kw) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.errors = errors or {}

    def __str__(self) -> str:
        text = super().__str__()
        for key, msg in sorted(self.errors.items()):
            text += f"\n  {key}: {msg}"
        return text


class TaskFailed(ProxmoxError):
    """A Proxmox task ended with an exitstatus other than OK / WARNINGS: n."""

    def __init__(self, message: str, *, upid: str, exitstatus: str | None,
                 log_tail: list[str] | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_tail = log_tail or []

    def __str__(self) -> str:
        text = super().__str__()
        if self.log_tail:
            text += "\n  task log (tail):\n" + "\n".join("    " + ln for ln in self.log_tail)
        return text


class PermissionPathError(ProvisionError):
    """Neither path to set root-only keys (devN, bind mounts) is available."""


class RefusedError(ProvisionError):
    """The tool refuses to act, to avoid destroying what it did not create."""


class LockHeld(ProvisionError):
    """Another provision run holds the lock for this container."""
