"""The model step planned from facts: when to fetch, when to skip, and the bind mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.config.schema import ModelFile
from provisioner.facts.services import FileState, ModelFacts, parse_model
from provisioner.operations.container import desired_config
from provisioner.operations.model import (
    MODEL_MOUNT_KEY,
    ModelHostDirStep,
    ModelStep,
    why_fetch,
)
from provisioner.operations.model_transfer import hub_source, hub_url

from .helpers import config, ctx

SPEC = ModelFile(repo="org/m-GGUF", file="m.gguf")
SRC = hub_source(SPEC)
GOOD = {"size": 10, "mtime": 5, "sha256": "a" * 64, "verified": "sha256", "source": SRC}


@pytest.mark.parametrize("state, spec, reason", [
    (None, SPEC, "missing"),
    (FileState(10, 5, None), SPEC, "present but never verified"),
    (FileState(11, 5, GOOD), SPEC, "changed since it was verified"),
    (FileState(10, 6, GOOD), SPEC, "changed since it was verified"),
    (FileState(10, 5, GOOD), ModelFile(repo="org/m-GGUF", file="m.gguf", sha256="b" * 64),
     "its sha256 differs from the configured sha256"),
    (FileState(10, 5, GOOD), ModelFile(repo="org/m-GGUF", file="m.gguf", revision="v2"),
     "the configured source changed"),
    (FileState(10, 5, GOOD), SPEC, None),
    (FileState(10, 5, GOOD), ModelFile(repo="org/m-GGUF", file="m.gguf", sha256="a" * 64), None),
])
def test_why_fetch(state, spec, reason) -> None:
    assert why_fetch(spec, state, hub_source(spec)) == reason


def test_hub_url_quotes_revision_and_keeps_subdirs() -> None:
    spec = ModelFile(repo="org/m-GGUF", file="Q4/m.gguf", revision="refs/pr/1")
    assert hub_url(spec, "https://hf.example/") == "https://hf.example/org/m-GGUF/resolve/refs%2Fpr%2F1/Q4/m.gguf"


def test_parse_model_facts() -> None:
    out = ('dir 1\navail 5000\nfile model 10 5\nsidecar model {"size": 10, "mtime": 5, "sha256": "ab"}\n'
           "file draft 3 4\nsidecar draft {not json\n")
    facts = parse_model(out, 0)
    assert facts == ModelFacts(files={"model": FileState(10, 5, {"size": 10, "mtime": 5, "sha256": "ab"}),
                                      "draft": FileState(3, 4, None)}, avail=5000, dir_exists=True)


def sidecar_for(cfg, spec) -> dict:
    return {"size": 10, "mtime": 5, "sha256": "a" * 64, "verified": "sha256", "source": hub_source(spec)}


def test_verified_model_plans_nothing_and_missing_draft_is_downloaded_on_the_host() -> None:
    cfg = config({"model": {"draft": {"repo": "org/d-GGUF", "file": "d.gguf"}}})
    facts = ModelFacts(files={"model": FileState(10, 5, sidecar_for(cfg, cfg.model))}, dir_exists=True)
    changes = ModelStep(cfg).plan(ctx(cfg, {"model.host": facts}))
    assert [(c.action, c.target, c.summary) for c in changes] == [
        ("download", "host", "download model.draft d.gguf: missing")]
    assert changes[-1].refresh is True
    assert list(changes[0].diff) == ["/var/lib/provision/models/d.gguf"]


def test_location_container_plans_in_the_container() -> None:
    cfg = config({"model": {"location": "container", "dir": "/srv/llm"}})
    step = ModelStep(cfg)
    assert [f.where for f in step.facts] == ["ct"]
    changes = step.plan(ctx(cfg, {}))
    assert [(c.action, c.target, list(c.diff)) for c in changes] == [
        ("download", "ct 120", ["/srv/llm/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"])]


def test_local_file_is_pushed_and_skipped_once_recorded(tmp_path: Path) -> None:
    local = tmp_path / "tiny.gguf"
    local.write_bytes(b"GGUF" + b"\0" * 100)
    base = {"model": {"repo": None, "file": None, "path": str(local)}}
    cfg = config(base)
    changes = ModelStep(cfg).plan(ctx(cfg, {"model.host": ModelFacts(dir_exists=True)}))
    assert [(c.action, c.summary) for c in changes] == [("push", "push model tiny.gguf: missing")]
    st = local.stat()
    side = {"size": 104, "mtime": 7, "sha256": "c" * 64, "verified": "sha256",
            "source": {"path": str(local.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}}
    facts = ModelFacts(files={"model": FileState(104, 7, side)}, dir_exists=True)
    assert ModelStep(cfg).plan(ctx(cfg, {"model.host": facts})) == []
    local.write_bytes(b"GGUF" + b"\1" * 200)  # the local file changed: push again
    assert [c.action for c in ModelStep(cfg).plan(ctx(cfg, {"model.host": facts}))] == ["push"]


def test_host_location_contributes_a_read_only_bind_mount() -> None:
    cfg = config({"model": {"host_dir": "/tank/models", "dir": "/srv/models"}})
    assert desired_config(ctx(cfg))[MODEL_MOUNT_KEY] == "/tank/models,mp=/srv/models,ro=1"
    cfg = config({"model": {"location": "container"}})
    assert MODEL_MOUNT_KEY not in desired_config(ctx(cfg))


def test_host_dir_is_created_before_the_container_starts() -> None:
    cfg = config()
    step = ModelHostDirStep(cfg)
    assert [c.summary for c in step.plan(ctx(cfg, {"model.host": ModelFacts(dir_exists=False)}))] == [
        "create the models directory /var/lib/provision/models"]
    assert step.plan(ctx(cfg, {"model.host": ModelFacts(dir_exists=True)})) == []
    assert ModelHostDirStep(config({"model": {"location": "container"}})).facts == []
