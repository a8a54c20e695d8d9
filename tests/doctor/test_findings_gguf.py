"""Findings, exit codes, JSON output, the GGUF reader, and the whole check list on recorded facts."""

from __future__ import annotations

import base64
import struct

import pytest

from provisioner.cli.doctor import render
from provisioner.cli.output import Output
from provisioner.doctor.findings import (
    AREAS,
    DoctorReport,
    Evidence,
    exit_code,
    fail,
    ok,
    warn,
    worst,
)
from provisioner.doctor.gguf import kv_cache_bytes, read_metadata, shape_from_metadata
from provisioner.doctor.runner import CHECKS, all_facts, run_checks, target_config
from provisioner.redact import register

from .recorded_ctx import config, context, raw


def test_exit_codes():
    assert exit_code([ok("host.a", "x")]) == 0
    assert exit_code([ok("host.a", "x"), warn("host.b", "y")]) == 0
    assert exit_code([warn("host.b", "y")], strict=True) == 1
    assert exit_code([warn("host.b", "y"), fail("host.c", "z")]) == 1
    assert exit_code([]) == 0
    assert worst([ok("a.a", ""), fail("a.b", ""), warn("a.c", "")]) == "fail"


def test_finding_area_from_id_and_evidence_cut():
    f = fail("driver.userspace", "t", Evidence("cmd", "\n".join(str(i) for i in range(40))), fix="do x")
    assert f.area == "driver"
    assert f.evidence.output.splitlines()[-1] == "... (28 more lines)"


def test_json_output_is_redacted():
    secret = register("s3cr3t-token-value")
    rep = DoctorReport(findings=[fail("access.api", f"bad token {secret}", Evidence("curl", secret), fix=secret)])
    text = str(rep.as_dict())
    assert secret not in text and "********" in text
    assert rep.as_dict()["ok"] is False and rep.as_dict()["counts"] == {"ok": 0, "warn": 0, "fail": 1}


def test_every_finding_on_recorded_facts_is_well_formed():
    findings = run_checks(context())
    ids = [f.id for f in findings]
    assert len(ids) >= 25
    for f in findings:
        assert f.area in AREAS and f.id.startswith(f.area + ".")
        assert f.evidence is not None and f.evidence.command
        assert (f.fix is None) == (f.status == "ok"), f


def test_check_list_covers_every_area():
    modules = {c.__module__.rsplit(".", 1)[1] for c in CHECKS}
    assert modules == {f"checks_{a}" for a in AREAS}


def test_doctor_gathers_the_engine_facts_too():
    names = {f.name for f in all_facts(config())}
    assert {"nvidia.driver", "nvidia.devices", "nvidia.boot", "kernel.modules", "ct.driver", "ct.cuda", "ct.llama",
            "services.ct", "model.ct", "resolv.ct", "doctor.ct_smi", "doctor.server"} <= names


def test_vmid_option_overrides_the_container():
    cfg = target_config(config(), 321)
    assert cfg.container.vmid == 321 and cfg.proxmox == config().proxmox


def test_render_shows_evidence_and_fix(capsys):
    rep = DoctorReport(findings=run_checks(context(raw={"resolv.ct": "exists\nattrs ----i----\npve-managed\n"})))
    render(Output(), rep, verbose=False)
    err = capsys.readouterr().err
    assert "FAIL /etc/resolv.conf is immutable (chattr +i)" in err
    assert "fix (doctor --fix): doctor --fix clears it" in err
    assert "| attrs ----i----" in err


# -- GGUF -----------------------------------------------------------------------------------------

def _gguf_head() -> bytes:
    line = next(ln for ln in raw("doctor.server").splitlines() if ln.startswith("gguf "))
    return base64.b64decode(line[5:])


def test_gguf_header_of_the_real_model():
    meta = read_metadata(_gguf_head())
    shape = shape_from_metadata(meta)
    assert meta["general.architecture"] == "llama"
    assert (shape.n_layers, shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim_k) == (30, 576, 9, 3, 64)
    assert shape.n_ctx_train == 8192


def test_gguf_truncated_and_bad_magic():
    head = _gguf_head()
    assert "general.architecture" in read_metadata(head[:200])
    assert shape_from_metadata(read_metadata(head[:200])) is None
    with pytest.raises(ValueError):
        read_metadata(b"NOPE" + head[4:])


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


def test_gguf_built_by_hand_with_gqa_and_explicit_key_length():
    s = lambda t: struct.pack("<Q", len(t)) + t.encode()
    kvs = [_kv("general.architecture", 8, s("qwen3")), _kv("qwen3.block_count", 4, struct.pack("<I", 48)),
           _kv("qwen3.embedding_length", 4, struct.pack("<I", 2048)),
           _kv("qwen3.attention.head_count", 4, struct.pack("<I", 32)),
           _kv("qwen3.attention.head_count_kv", 4, struct.pack("<I", 4)),
           _kv("qwen3.attention.key_length", 4, struct.pack("<I", 128)),
           _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + s("a") + s("b")),
           _kv("qwen3.context_length", 4, struct.pack("<I", 262144))]
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    shape = shape_from_metadata(read_metadata(data))
    assert (shape.n_embd_k, shape.n_embd_v, shape.n_ctx_train) == (512, 512, 262144)
    # 48 layers × 32768 tokens × 512 × (2 bytes f16 k + 2 bytes f16 v) = 3 GiB
    assert kv_cache_bytes(shape, 32768, "f16", "f16") == 48 * 32768 * 512 * 4 == 3 * 1024 ** 3
    assert kv_cache_bytes(shape, 32768, "q4_0", "q4_0") == int(48 * 32768 * 512 * 2 * 18 / 32)
