"""The one place that fetches test assets: pinned files are verified, tampered ones never used."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provisioner.sim import assets


def _item(content: bytes, name: str = "thing-1.0.tar.gz") -> assets.Download:
    # a spec no index has: a test that reaches pip fails with AssetError, never silently
    return assets.Download("provision-test-no-such-package==0.0.0", True, name, hashlib.sha256(content).hexdigest())


def test_a_verified_file_is_used_without_downloading(tmp_path: Path) -> None:
    item = _item(b"pinned bytes")
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / item.filename).write_bytes(b"pinned bytes")
    assert assets.download(item, tmp_path) == tmp_path / "pip" / item.filename
    # hashed once, then the stamp stands for it
    assert (tmp_path / "pip" / f"{item.filename}.sha256").read_text() == item.sha256
    assert assets.download(item, tmp_path).read_bytes() == b"pinned bytes"


def test_a_tampered_file_is_deleted_and_fetched_again(tmp_path: Path) -> None:
    item = _item(b"pinned bytes")
    (tmp_path / "pip").mkdir()
    target = tmp_path / "pip" / item.filename
    target.write_bytes(b"other bytes!")
    with pytest.raises(assets.AssetError, match="pip download provision-test-no-such-package==0.0.0 failed"):
        assets.download(item, tmp_path)
    assert not target.exists()


def test_a_stale_stamp_does_not_vouch_for_a_newer_file(tmp_path: Path) -> None:
    item = _item(b"pinned bytes")
    (tmp_path / "pip").mkdir()
    target = tmp_path / "pip" / item.filename
    target.write_bytes(b"pinned bytes")
    assets.download(item, tmp_path)
    target.write_bytes(b"replaced later")  # newer than the stamp
    with pytest.raises(assets.AssetError):
        assets.download(item, tmp_path)


def test_a_derived_file_appears_only_when_complete(tmp_path: Path) -> None:
    def fail(partial: Path) -> None:
        partial.write_bytes(b"half")
        raise RuntimeError("interrupted")

    out = tmp_path / "derived.bin"
    with pytest.raises(RuntimeError):
        assets._derived(out, tmp_path, fail)
    assert not out.exists()
    assert assets._derived(out, tmp_path, lambda p: p.write_bytes(b"whole")).read_bytes() == b"whole"


def test_every_pin_names_its_file() -> None:
    for item in (assets.LLAMA_SDIST, assets.MODEL_WHEEL, assets.CUBLAS_WHEEL, *assets.GEMMA3_PARTS):
        name, version = item.spec.split("==")
        assert item.filename.startswith(f"{name.replace('-', '_')}-{version}") and len(item.sha256) == 64
