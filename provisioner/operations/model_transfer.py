"""Moving a model file to where llama-server reads it.

- From Hugging Face: a bash script (``templates/model/fetch.sh.j2``) runs curl with
  resume on the host or in the container and verifies size and sha256.
- From a local file: streamed over the SSH channel's stdin in 1 MiB chunks (never
  read into memory whole), appended to ``<dest>.part`` so an interrupted push
  resumes; the sha256 is computed locally while streaming and checked remotely.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paramiko

from ..config.schema import ModelFile
from ..connectors.ssh import SSH
from ..errors import RemoteError, SSHError
from ..facts.services import SIDECAR_SUFFIX
from .apt import prelude as apt_prelude
from .scripts import Runner, render

CHUNK = 1 << 20
#: room left free beyond the file itself
MARGIN = 256 * 1024 * 1024
HF_ENDPOINT = "https://huggingface.co"


def hub_url(spec: ModelFile, endpoint: str | None = None) -> str:
    """The ``resolve`` URL of a file in a Hugging Face repo (``HF_ENDPOINT`` overrides the host)."""
    base = (endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    assert spec.repo and spec.file
    return f"{base}/{spec.repo}/resolve/{quote(spec.revision, safe='')}/{quote(spec.file, safe='/')}"


def hub_source(spec: ModelFile) -> dict[str, Any]:
    return {"repo": spec.repo, "file": spec.file, "revision": spec.revision}


def local_source(spec: ModelFile) -> dict[str, Any]:
    """Identity of a local file: path, size, mtime (re-hashing 20 GB per plan would be absurd)."""
    assert spec.path
    path = Path(spec.path).expanduser().resolve()
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def fetch_script(spec: ModelFile, dest: str, *, token: str | None, install_curl: bool,
                 endpoint: str | None = None, fresh: bool = False) -> str:
    """The download script; ``fresh``: a new upstream file replaces a verified one (no resume from it,
    and the old file serves until the new one is verified and renamed over it)."""
    if token is not None and ("\n" in token or "\r" in token):
        raise RemoteError("the Hugging Face token contains a line break")
    return render("model/fetch.sh.j2", dest=dest, url=hub_url(spec, endpoint), token=token,
                  sha256=spec.sha256, source_json=json.dumps(hub_source(spec), sort_keys=True),
                  install_curl=install_curl, margin=MARGIN, sidecar_suffix=SIDECAR_SUFFIX, fresh=fresh,
                  apt_prelude=apt_prelude() if install_curl else "")


class Progress:
    """Turns the scripts' output lines into status messages (rate-limited)."""

    def __init__(self, what: str, status: Callable[[str], None]) -> None:
        self.what, self.status = what, status
        self.t0 = time.monotonic()
        self.last = 0.0
        self.result: tuple[str, int] | None = None

    def bytes(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 1 and done < total:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-3) / 1e6
        pct = f"{100 * done / total:.1f}% of {total / 1e9:.2f} GB" if total else f"{done / 1e9:.2f} GB"
        self.status(f"{self.what}: {pct} ({rate:.1f} MB/s)")

    def line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        words = rest.split()
        if kind == "progress" and len(words) == 2 and all(w.isdigit() for w in words):
            self.bytes(int(words[0]), int(words[1]))
        elif kind == "status":
            self.status(f"{self.what}: {rest}")
        elif kind == "done" and len(words) == 2:
            self.result = (words[0], int(words[1]))


def run_fetch(run: Runner, script: str, what: str, status: Callable[[str], None], **ctx: Any) -> tuple[str, int]:
    """Run a fetch script; returns (sha256, size)."""
    progress = Progress(what, status)
    result = run(script, on_line=progress.line)
    if not result.ok or progress.result is None:
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        raise RemoteError(f"{what} failed: " + (errors[-1][7:] if errors else f"exit {result.exit_code}"),
                          exit_code=result.exit_code, output=result.stderr, **ctx)
    return progress.result


# -- pushing a local file -------------------------------------------------------------------------

def _remote_cmd(vmid: int | None, inner: str) -> str:
    if vmid is None:
        return inner
    return f"pct exec {int(vmid)} -- sh -c {shlex.quote(inner)}"


def stream_file(ssh: SSH, local: Path, remote_part: str, *, vmid: int | None,
                on_bytes: Callable[[int, int], None]) -> str:
    """Append ``local`` to ``remote_part`` from where it stops; returns the local file's sha256."""
    q = shlex.quote(remote_part)
    dest = shlex.quote(remote_part.removesuffix(".part"))
    total = local.stat().st_size
    # a shorter file in place without a sidecar is an unfinished copy: it becomes the partial file
    # and resumes; a whole one stays where it is (push_local verified it first, and it may be serving)
    probe = ssh.run(_remote_cmd(vmid, f"d=\"$(dirname {q})\"; mkdir -p \"$d\" && chmod 0755 \"$d\" && "
                                      f"{{ [ ! -f {dest} ] || [ -f {q} ] || [ \"$(stat -c %s {dest})\" -ge {total} ] "
                                      f"|| mv -f {dest} {q}; }} && "
                                      f"echo \"$(stat -c %s {q} 2>/dev/null || echo 0) "
                                      f"$(df -P -B1 \"$d\" | awk 'NR==2{{print $4}}')\""))
    probe.check(f"preparing {remote_part}", vmid=vmid)
    words = (probe.stdout.strip().splitlines() or ["0 0"])[-1].split()
    offset = int(words[0]) if words and words[0].isdigit() else 0
    avail = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    if offset > total:
        offset = 0
    if avail is not None and avail < total - offset + MARGIN:
        raise RemoteError(f"not enough free space for {local.name}: {(total - offset + MARGIN) >> 20} MiB needed, "
                          f"{avail >> 20} MiB free", vmid=vmid, fix="free space or choose model.host_dir/model.dir "
                          "on a larger disk")
    digest = hashlib.sha256()
    with local.open("rb") as fh:
        # hash what is already there, locally, so the result covers the whole file
        remaining = offset
        while remaining:
            block = fh.read(min(CHUNK, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
        mode = ">>" if offset else ">"
        cmd = _remote_cmd(vmid, f"umask 022 && cat {mode} {q}")
        ssh.round_trips += 1
        try:
            transport = ssh.client().get_transport()
            assert transport is not None
            chan = transport.open_session(timeout=ssh.target.timeout)
            chan.exec_command(cmd)
            done = offset
            while True:
                block = fh.read(CHUNK)
                if not block:
                    break
                digest.update(block)
                chan.sendall(block)
                done += len(block)
                on_bytes(done, total)
            chan.shutdown_write()
            code = chan.recv_exit_status()
            err = chan.recv_stderr(65536).decode("utf-8", "replace") if chan.recv_stderr_ready() else ""
            chan.close()
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            ssh.close()
            raise SSHError(f"the SSH connection dropped while pushing {local.name}: {exc}", host=ssh.target.host,
                           vmid=vmid, fix="re-run: the push resumes where it stopped") from None
    if code != 0:
        raise RemoteError(f"writing {remote_part} failed (exit {code})", exit_code=code, output=err, vmid=vmid)
    return digest.hexdigest()


def push_local(ssh: SSH, run: Runner, spec: ModelFile, dest: str, *, vmid: int | None,
               status: Callable[[str], None]) -> tuple[str, int]:
    """Push ``spec.path`` to ``dest`` (on the host when vmid is None), verify, write the sidecar."""
    assert spec.path
    local = Path(spec.path).expanduser().resolve()
    source = local_source(spec)

    def finalize(sha: str, in_place: bool) -> str:
        return render("model/push-finalize.sh.j2", dest=dest, size=source["size"], sha256=sha, in_place=in_place,
                      source_json=json.dumps(source, sort_keys=True), sidecar_suffix=SIDECAR_SUFFIX)

    def check(sha: str) -> None:
        if spec.sha256 and sha != spec.sha256:
            raise RemoteError(f"{local} has sha256 {sha}, but model.sha256 says {spec.sha256}", vmid=vmid,
                              fix="fix model.sha256 or the file")

    # a whole file in place without a valid sidecar (copied by hand, changed in place): verified where
    # it is against the local file, never moved away or deleted before its replacement is verified
    there = ssh.run(_remote_cmd(vmid, f"[ -f {shlex.quote(dest)} ] && [ ! -f {shlex.quote(dest + '.part')} ] && "
                                      f"stat -c %s {shlex.quote(dest)}"))
    if there.ok and there.stdout.strip() == str(source["size"]):
        status(f"hashing {local.name} here to compare with the file in place")
        sha = _sha256(local)
        check(sha)
        try:
            return run_fetch(run, finalize(sha, True), f"verifying the {local.name} in place", status, vmid=vmid)
        except RemoteError as exc:
            if exc.exit_code != 9:
                raise
            status(f"the {local.name} in place differs from {local}: pushing it again (it stays until replaced)")
    progress = Progress(f"pushing {local.name}", status)
    sha = stream_file(ssh, local, dest + ".part", vmid=vmid, on_bytes=progress.bytes)
    check(sha)
    return run_fetch(run, finalize(sha, False), f"verifying {local.name}", status, vmid=vmid)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
