"""doctor with several models (router mode): every file, each Claude Code model's context, and
the models_max largest at once against the GPUs' memory, from recorded facts plus stated ones."""

from __future__ import annotations

import json

from provisioner.doctor import checks_services as cs

from .recorded_ctx import MODEL, config, context, one

SHAPE = json.dumps({"arch": "llama", "n_layers": 30, "n_embd": 576, "n_head": 9, "n_head_kv": 3,
                    "head_dim_k": 64, "head_dim_v": 64, "n_ctx_train": 8192})


def two(**extra):
    return config(model=None, models=[{"path": MODEL, "location": "container", "alias": "a"},
                                      {"path": "/x/b.gguf", "location": "container", "alias": "b", **extra}],
                  gpu={"enabled": True})


def files(*names: str, size: int = 100 << 20) -> str:
    out = ["dir 1", "avail 999999999999"]
    for role in names:
        out += [f"file {role} {size} 1", f"shape {role} {SHAPE}"]
    return "\n".join(out) + "\n"


def test_all_present_fit_and_enough_context() -> None:
    d = context(cfg=two(), raw={"model.ct": files("model", "model.b"),
                                "doctor.vram": "0, 24564, 100, 24464\n"})
    got = {f.id: f for f in cs.check_models(d)}
    assert got["services.models"].status == "ok" and got["services.context"].status == "ok"
    assert got["services.vram"].status == "ok" and "2 of 2 models at once" in got["services.vram"].title
    # the single-model checks leave router mode to this one
    assert cs.check_vram(d) == [] and cs.check_context(d) == []


def test_a_missing_file_and_an_over_commit_are_named() -> None:
    d = context(cfg=two(ctx_size=1048576), raw={"model.ct": files("model", size=1 << 30),
                                                "doctor.vram": "0, 8192, 100, 8092\n"})
    missing = one(cs.check_models(d), "services.models")
    assert missing.status == "fail" and "/x/b.gguf" not in missing.title and "b.gguf (b)" in missing.title
    d = context(cfg=two(ctx_size=1048576), raw={"model.ct": files("model", "model.b", size=1 << 30),
                                                "doctor.vram": "0, 8192, 100, 8092\n"})
    vram = one(cs.check_models(d), "services.vram")
    assert vram.status == "fail" and "does not fit: b" in vram.title, vram.title
    assert "b: file 1024 MiB + KV cache 12240 MiB (1048576 tokens, k q8_0" in vram.evidence.output
