"""SSH to the Proxmox host, on paramiko.

- Host keys are checked against known_hosts; an unknown key is an error unless
  trust-on-first-use is configured (then it is saved), a changed key always is.
- Key file or agent authentication.
- ``run`` sends a command, optional stdin bytes, and returns exit code and output;
  output can be streamed line by line. Secrets go through stdin, never argv.
- One ``run`` is one round trip; ``round_trips`` counts them for the benchmark.
- paramiko and socket errors are translated here, once, into ``SSHError``.
"""

from __future__ import annotations

import select
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def _import_paramiko():  # noqa: ANN202 - the module
    """paramiko without `invoke`: paramiko.config imports it (and through it unittest and asyncio,
    ~0.1-0.2 s of every run's start) only for ssh_config's `Match exec`, which we never parse; it
    falls back cleanly when the import fails. The block is lifted again, so anyone else can import it."""
    blocked = "invoke" not in sys.modules
    if blocked:
        sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        import paramiko as module
    finally:
        if blocked and sys.modules.get("invoke") is None:
            del sys.modules["invoke"]
    return module


paramiko = _import_paramiko()

from ..errors import HostKeyError, RemoteError, SSHError
from ..redact import redact


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    use_agent: bool = True
    known_hosts: str = "~/.ssh/known_hosts"
    trust_on_first_use: bool = False
    timeout: float = 20.0


@dataclass(frozen=True)
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self, what: str, **ctx: object) -> "Result":
        """Raise RemoteError (with the output tail) unless the command succeeded."""
        if not self.ok:
            raise RemoteError(f"{what} failed (exit {self.exit_code})", command=redact(self.command),
                              exit_code=self.exit_code, output=redact(self.stderr or self.stdout), **ctx)
        return self


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SSHTarget, path: Path) -> None:
        self._target = target
        self._path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fp = "SHA256:" + _b64_sha256(key)
        if self._target.trust_on_first_use:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            client.get_host_keys().add(hostname, key.get_name(), key)
            with self._path.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            return
        raise HostKeyError(
            f"the SSH host key of {hostname} is not known ({key.get_name()} {fp})",
            host=self._target.host,
            fix=(f"check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_{_key_kind(key)}_key.pub), "
                 f"then add it: ssh-keyscan -p {self._target.port} {self._target.host} >> {self._path} "
                 "— or set ssh.trust_on_first_use: true"))


def _key_kind(key: paramiko.PKey) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key.get_name(), "ecdsa")


def _b64_sha256(key: paramiko.PKey) -> str:
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class SSH:
    """One SSH connection to a host; reconnects after a dropped connection."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.round_trips = 0
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # -- connection -----------------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        known = Path(t.known_hosts).expanduser()
        try:
            client.load_system_host_keys()
            if known.exists():
                # host:port entries are written "[host]:port" as OpenSSH does
                client.load_host_keys(str(known))
        except (OSError, paramiko.SSHException) as exc:
            raise SSHError(f"cannot read known_hosts {known}: {exc}", host=t.host) from None
        client.set_missing_host_key_policy(_KnownHostsPolicy(t, known))
        try:
            client.connect(t.host, port=t.port, username=t.user,
                           key_filename=str(Path(t.key_file).expanduser()) if t.key_file else None,
                           allow_agent=t.use_agent, look_for_keys=t.key_file is None and t.use_agent,
                           timeout=t.timeout, banner_timeout=t.timeout, auth_timeout=t.timeout)
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"the SSH host key of {t.host} CHANGED (got {exc.key.get_name()} "
                f"SHA256:{_b64_sha256(exc.key)}) — possible man-in-the-middle", host=t.host,
                fix=f"if the host was reinstalled, remove the old key: ssh-keygen -R '[{t.host}]:{t.port}' "
                    f"-f {known}") from None
        except paramiko.AuthenticationException as exc:
            raise SSHError(f"SSH authentication as {t.user}@{t.host} failed: {exc}", host=t.host,
                           fix="check ssh.key_file or load the key into ssh-agent") from None
        except (paramiko.SSHException, OSError, socket.timeout) as exc:
            raise SSHError(f"cannot connect to {t.host}:{t.port} over SSH: {exc}", host=t.host) from None
        return client

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- commands -------------------------------------------------------------------------------

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None,
            on_line: Callable[[str], None] | None = None) -> Result:
        """Run ``command`` (a shell command line) and wait for it; never raises on a non-zero exit."""
        self.round_trips += 1
        client = self.client()
        try:
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=self.target.timeout)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = _drain(chan, timeout, on_line)
            code = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError, socket.timeout) as exc:
            self.close()
            raise SSHError(f"SSH connection to {self.target.host} dropped while running a command: {exc}",
                           command=redact(command), host=self.target.host,
                           fix="re-run: every step is safe to repeat") from None
        if code == -1:
            self.close()
            raise SSHError(f"SSH connection to {self.target.host} closed before the command finished",
                           command=redact(command), output=redact(err or out), host=self.target.host,
                           fix="re-run: every step is safe to repeat")
        return Result(command=command, exit_code=code, stdout=out, stderr=err)

    def put(self, data: bytes, path: str, *, mode: str = "0644", owner: str | None = None) -> Result:
        """Write ``data`` to ``path`` atomically (temp file + rename) through stdin."""
        return self.run(atomic_write_command(path, mode, owner), stdin=data).check(
            f"writing {path}", host=self.target.host)


def atomic_write_command(path: str, mode: str = "0644", owner: str | None = None) -> str:
    """A shell command that writes its stdin to ``path`` atomically (temp file + rename)."""
    if not mode.isdigit() or len(mode) > 4:
        raise ValueError(f"file mode must be octal digits, not {mode!r}")
    q = shlex.quote(path)
    tmp = shlex.quote(path + ".provision-tmp")
    chown = f" && chown {shlex.quote(owner)} {tmp}" if owner else ""
    return (f"umask 077 && mkdir -p \"$(dirname {q})\" && cat > {tmp} && chmod {mode} {tmp}{chown} "
            f"&& mv -f {tmp} {q}")


def _drain(chan: paramiko.Channel, timeout: float | None,
           on_line: Callable[[str], None] | None) -> tuple[str, str]:
    """Read stdout and stderr until EOF, optionally calling ``on_line`` per stdout line."""
    out, err = bytearray(), bytearray()
    pending = b""
    deadline = time.monotonic() + timeout if timeout else None
    chan.settimeout(0.5)
    while True:
        progressed = False
        if chan.recv_ready():
            chunk = chan.recv(65536)
            out += chunk
            progressed = True
            if on_line is not None:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for ln in lines:
                    on_line(ln.decode("utf-8", "replace"))
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            progressed = True
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if deadline and time.monotonic() > deadline:
            chan.close()
            raise socket.timeout(f"command did not finish within {timeout:.0f}s")
        if not progressed:
            select.select([chan], [], [], 0.5)
    if on_line is not None and pending:
        on_line(pending.decode("utf-8", "replace"))
    return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
