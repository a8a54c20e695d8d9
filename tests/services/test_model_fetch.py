"""The model download script, run for real (bash + curl) against a hub-like HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from provisioner.config.schema import ModelFile
from provisioner.connectors.ssh import Result
from provisioner.errors import RemoteError
from provisioner.facts.services import FileState, parse_model
from provisioner.operations.model import why_fetch
from provisioner.operations.model_transfer import fetch_script, hub_source, run_fetch

from .hub_server import HubServer

SPEC = ModelFile(repo="org/tiny-GGUF", file="tiny.gguf")


def local_run(script: str, *, on_line=None, timeout=None) -> Result:
    """Run a script here the way SSH runs it there: stdin, streamed stdout lines."""
    proc = subprocess.Popen(["bash", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(script)
    proc.stdin.close()
    out = []
    for line in proc.stdout:
        out.append(line)
        if on_line:
            on_line(line.rstrip("\n"))
    err = proc.stderr.read()
    return Result("bash -s", proc.wait(), "".join(out), err)


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    p = tmp_path / "src.gguf"
    p.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    return p


def fetch(spec: ModelFile, dest: Path, hub: HubServer, *, token: str | None = None,
          statuses: list[str] | None = None) -> tuple[str, int]:
    script = fetch_script(spec, str(dest), token=token, install_curl=False, endpoint=hub.url)
    return run_fetch(local_run, script, "downloading", (statuses if statuses is not None else []).append)


def sidecar(dest: Path) -> dict:
    return json.loads(dest.with_name(dest.name + ".provision.json").read_text())


def state_of(dest: Path) -> FileState:
    """What the facts would report for ``dest`` (through the real fact parser)."""
    st = dest.stat()
    side = dest.with_name(dest.name + ".provision.json").read_text().replace("\n", "")
    return parse_model(f"dir 1\nfile model {st.st_size} {int(st.st_mtime)}\nsidecar model {side}", 0).files["model"]


def test_download_verifies_sha_and_writes_sidecar(tmp_path: Path, blob: Path) -> None:
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        dest = tmp_path / "models" / "tiny.gguf"
        statuses: list[str] = []
        sha, size = fetch(SPEC, dest, hub, statuses=statuses)
    finally:
        hub.close()
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert (sha, size) == (want, blob.stat().st_size)
    assert dest.read_bytes() == blob.read_bytes() and not dest.with_name("tiny.gguf.part").exists()
    side = sidecar(dest)
    assert side == {"size": size, "mtime": int(dest.stat().st_mtime), "sha256": want, "verified": "sha256",
                    "source": hub_source(SPEC)}
    assert any("verifying sha256" in s for s in statuses)
    # the next plan finds it present and verified: nothing to do
    assert why_fetch(SPEC, state_of(dest), hub_source(SPEC)) is None


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path, blob: Path) -> None:
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob}, cut_after=1024 * 1024)
    try:
        dest = tmp_path / "tiny.gguf"
        with pytest.raises(RemoteError, match="download failed"):
            script = fetch_script(SPEC, str(dest), token=None, install_curl=False, endpoint=hub.url)
            # no curl retries for the first attempt, so the cut is visible
            run_fetch(local_run, script.replace("--retry 5 ", "--retry 0 "), "downloading", lambda s: None)
        part = tmp_path / "tiny.gguf.part"
        assert part.stat().st_size == 1024 * 1024
        _, size = fetch(SPEC, dest, hub)
        ranges = [r for m, p, a, r in hub.requests if p.startswith("/cdn/") and r]
    finally:
        hub.close()
    assert ranges == ["bytes=1048576-"]
    assert dest.read_bytes() == blob.read_bytes() and size == blob.stat().st_size


def test_sha_mismatch_removes_the_partial_file(tmp_path: Path, blob: Path) -> None:
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob}, etag="ab" * 32)
    try:
        with pytest.raises(RemoteError, match="sha256 mismatch"):
            fetch(SPEC, tmp_path / "tiny.gguf", hub)
    finally:
        hub.close()
    assert list(tmp_path.glob("tiny.gguf*")) == []


def test_configured_sha256_wins_over_the_hub(tmp_path: Path, blob: Path) -> None:
    spec = ModelFile(repo="org/tiny-GGUF", file="tiny.gguf", sha256="cd" * 32)
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        with pytest.raises(RemoteError, match="expected cdcd"):
            fetch(spec, tmp_path / "tiny.gguf", hub)
    finally:
        hub.close()


def test_token_goes_in_a_header_file_not_argv(tmp_path: Path, blob: Path) -> None:
    spec = ModelFile(repo="org/tiny-GGUF", file="tiny.gguf")
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob}, token="hf_secretTOKEN123")
    try:
        with pytest.raises(RemoteError, match="gated or private"):
            fetch(spec, tmp_path / "a.gguf", hub)
        script = fetch_script(spec, str(tmp_path / "b.gguf"), token="hf_secretTOKEN123", install_curl=False,
                              endpoint=hub.url)
        # the token is only inside a quoted heredoc written to a 0600 file, curl reads it with -H @file
        token_lines = [ln for ln in script.splitlines() if "hf_secretTOKEN123" in ln]
        assert token_lines == ["Authorization: Bearer hf_secretTOKEN123"]
        run_fetch(local_run, script, "downloading", lambda s: None)
        auths = {(p.split("/")[1], a) for m, p, a, r in hub.requests}
    finally:
        hub.close()
    assert (tmp_path / "b.gguf").read_bytes() == blob.read_bytes()
    # the hub saw the token (curl -L drops it when a redirect leads to another host, like HF's CDN)
    assert ("org", "Bearer hf_secretTOKEN123") in auths


def test_file_in_place_without_sidecar_is_verified_not_downloaded(tmp_path: Path, blob: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    dest.write_bytes(blob.read_bytes())
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        fetch(SPEC, dest, hub)
        gets = [p for m, p, a, r in hub.requests if p.startswith("/cdn/") and m == "GET"]
    finally:
        hub.close()
    assert gets == [] and sidecar(dest)["verified"] == "sha256"


def test_not_enough_space_fails_before_downloading(tmp_path: Path, blob: Path) -> None:
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        script = fetch_script(SPEC, str(tmp_path / "tiny.gguf"), token=None, install_curl=False, endpoint=hub.url)
        script = script.replace("need=$(( size - have + ", "need=$(( 1 << 62 + ")
        with pytest.raises(RemoteError, match="not enough free space"):
            run_fetch(local_run, script, "downloading", lambda s: None)
    finally:
        hub.close()
    assert not list(tmp_path.glob("tiny.gguf*"))


def test_a_wrong_file_in_place_is_replaced_in_the_same_run_and_never_deleted_first(tmp_path: Path,
                                                                                  blob: Path) -> None:
    """Issue 20 point 5: a model changed in place (same size) failed its checksum, was deleted, and the
    run exited 1; only a second run downloaded it. Now: verified in place, downloaded beside it, swapped."""
    dest = tmp_path / "tiny.gguf"
    wrong = bytearray(blob.read_bytes())
    wrong[1000] ^= 0xFF
    dest.write_bytes(bytes(wrong))
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob}, cut_after=4096)
    try:
        # the download breaks: the wrong file is still there (llama-server keeps serving), no error hides it
        script = fetch_script(SPEC, str(dest), token=None, install_curl=False, endpoint=hub.url)
        statuses: list[str] = []
        with pytest.raises(RemoteError, match="download failed"):
            run_fetch(local_run, script.replace("--retry 5 ", "--retry 0 "), "downloading", statuses.append)
        assert any("the file in place has sha256" in s for s in statuses), statuses
        assert dest.read_bytes() == bytes(wrong)
        sha, _ = fetch(SPEC, dest, hub)  # resumes the new download; the wrong file is replaced only now
    finally:
        hub.close()
    assert dest.read_bytes() == blob.read_bytes() and sidecar(dest)["sha256"] == sha


def test_a_corrupt_partial_file_is_downloaded_again_in_the_same_run(tmp_path: Path, blob: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    (tmp_path / "tiny.gguf.part").write_bytes(b"\0" * 4096)  # resumed bytes that are not the model's
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        statuses: list[str] = []
        fetch(SPEC, dest, hub, statuses=statuses)
        ranges = [r for m, p, a, r in hub.requests if p.startswith("/cdn/") and m == "GET"]
    finally:
        hub.close()
    assert dest.read_bytes() == blob.read_bytes()
    assert ranges == ["bytes=4096-", None]  # resumed, then the whole file once more
    assert any("downloading the whole file again" in s for s in statuses)


def test_refresh_replaces_a_verified_file_with_the_new_upstream_one(tmp_path: Path, blob: Path) -> None:
    """`up --refresh-models`: the hub's sha256 for the revision moved; the fact says so, the plan
    re-fetches, and the fresh download replaces the old file (nothing resumed from it)."""
    from provisioner.operations import model_refresh

    dest = tmp_path / "tiny.gguf"
    hub = HubServer({"org/tiny-GGUF/tiny.gguf": blob})
    try:
        fetch(SPEC, dest, hub)
        newer = tmp_path / "newer.gguf"
        newer.write_bytes(os.urandom(4 * 1024 * 1024 + 7))  # longer: a resume from the old file would corrupt it
        hub.files["org/tiny-GGUF/tiny.gguf"] = newer
        upstream = model_refresh.head(f"{hub.url}/org/tiny-GGUF/resolve/main/tiny.gguf", None)
        want = hashlib.sha256(newer.read_bytes()).hexdigest()
        assert upstream == {"sha256": want, "commit": "0" * 40, "size": str(newer.stat().st_size)}
        reason = why_fetch(SPEC, state_of(dest), hub_source(SPEC), upstream)
        assert reason and reason.startswith("main moved upstream: sha256 ")
        script = fetch_script(SPEC, str(dest), token=None, install_curl=False, endpoint=hub.url, fresh=True)
        sha, size = run_fetch(local_run, script, "downloading", lambda s: None)
    finally:
        hub.close()
    assert (sha, size) == (want, newer.stat().st_size) and dest.read_bytes() == newer.read_bytes()
    assert why_fetch(SPEC, state_of(dest), hub_source(SPEC), upstream) is None
