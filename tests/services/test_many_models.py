"""Several models in one host file: validation, router-mode units and preset, reload instead of
restart, the VRAM budget, the gateway's model table (data in, decisions out)."""

from __future__ import annotations

import configparser

import pytest

from provisioner.config.models import claude_slots, models_max, router_mode, serving
from provisioner.errors import ConfigError, ConfigErrors
from provisioner.facts.nvidia import DriverVersion, GpuInfo
from provisioner.facts.services import FileState, ModelFacts, UnitState, parse_model, parse_services
from provisioner.gateway.config import GatewaySettings, settings_from_mapping
from provisioner.gateway.models import ModelTable
from provisioner.operations.model import ModelStep
from provisioner.operations.services import ServicesStep, sha
from provisioner.operations.units import desired_units, gateway_config, llama_args, models_preset
from provisioner.operations.vram import budget

from .helpers import config, ctx
from .test_services_plan import converged

TWO = [{"repo": "org/coder-GGUF", "file": "coder-Q4_K_M.gguf", "alias": "coder", "ctx_size": 65536,
        "cache_type_k": "q4_0", "cache_type_v": "q4_0", "draft": {"repo": "org/tiny", "file": "tiny.gguf"}},
       {"repo": "org/small-GGUF", "file": "small-Q8_0.gguf", "alias": "small", "reasoning": "off", "preload": True,
        "override_kv": ["a.b=int:1", "c.d=bool:false"]}]


def two(**extra):
    return config({"model": None, "models": TWO, **extra})


def errors_of(data: dict) -> list[str]:
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        config(data)
    exc = info.value
    return [str(e) for e in (exc.errors if isinstance(exc, ConfigErrors) else [exc])]


def test_one_model_is_a_list_of_one_and_keeps_the_single_server() -> None:
    cfg = config()
    assert [m.model_id for m in cfg.models] == ["Qwen2.5-Coder-7B-Instruct-Q4_K_M"] and cfg.model is cfg.models[0]
    assert not router_mode(cfg)
    assert llama_args(cfg)[1:3] == ["-m", "/srv/models/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"]
    assert "/etc/provision/llama-models.ini" not in desired_units(cfg, 252)


def test_each_model_takes_its_own_settings_or_the_servers() -> None:
    cfg = two(server={"ctx_size": 32768, "cache_type_k": "f16"})
    coder, small = cfg.models
    assert (serving(cfg, coder).ctx_size, serving(cfg, coder).cache_type_k) == (65536, "q4_0")
    assert (serving(cfg, small).ctx_size, serving(cfg, small).cache_type_k, serving(cfg, small).reasoning) == \
        (32768, "f16", "off")
    assert claude_slots(cfg) == {"main": "coder", "small_fast": "coder"} and models_max(cfg) == 2
    # the router's command line does not name the count (adding a model must not change it)
    assert llama_args(cfg)[3:5] == ["--models-max", "64"]


def test_router_unit_and_preset() -> None:
    cfg = two(server={"models_max": 1, "threads": 4, "extra_args": ["--temp", "0.2"]},
              clients={"claude_code": False})
    args = llama_args(cfg)
    # only what every model shares is on the router's command line (it overrides every section)
    assert args[1:] == ["--models-preset", "/etc/provision/llama-models.ini", "--models-max", "1",
                        "--models-autoload", "--host", "127.0.0.1", "--port", "8080",
                        "--api-key-file", "/etc/provision/llama-server.key", "--metrics", "--threads", "4",
                        "--temp", "0.2"]
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";",))
    ini.read_string("[top]\n" + models_preset(cfg))
    assert ini.sections() == ["top", "coder", "small"]
    assert dict(ini["coder"]) == {
        "model": "/srv/models/coder-Q4_K_M.gguf", "ctx-size": "65536", "parallel": "1", "flash-attn": "auto",
        "cache-type-k": "q4_0", "cache-type-v": "q4_0", "fit": "on", "n-gpu-layers": "auto", "reasoning": "auto",
        "spec-draft-model": "/srv/models/tiny.gguf", "spec-draft-ngl": "auto", "spec-type": "draft-simple"}
    assert ini["small"]["override-kv"] == "a.b=int:1,c.d=bool:false"
    assert ini["small"]["load-on-startup"] == "true" and ini["small"]["reasoning"] == "off"
    unit = desired_units(cfg, 252)["/etc/systemd/system/llama-server.service"]
    assert "ConditionPathExists=/etc/provision/llama-models.ini" in unit and "LLAMA_CACHE=" in unit


def test_gateway_config_carries_the_table_and_the_gateway_accepts_it() -> None:
    import json

    cfg = two(clients={"claude_code": {"models": {"main": "coder", "small_fast": "small"}}})
    data = json.loads(gateway_config(cfg))
    assert data["models"] == {"coder": "coder", "small": "small"}
    assert data["claude_slots"] == {"main": "coder", "small_fast": "small"}
    settings = settings_from_mapping(data)
    assert settings.resolve_model("claude-haiku-4-5-20251001") == "small"
    assert settings.resolve_model("claude-sonnet-4-5") == "coder"


@pytest.mark.parametrize("data, expected", [
    ({"models": [{"repo": "o/a", "file": "a.gguf", "alias": "x"}, {"repo": "o/b", "file": "b.gguf", "alias": "x"}]},
     "models[1].alias: alias 'x' is already used by models[0]"),
    ({"models": [{"repo": "o/a", "file": "a.gguf"}, {"repo": "o/b", "file": "a.gguf", "alias": "y"}]},
     "models[1].file: file name a.gguf is also used by models[0]"),
    ({"models": [{"repo": "o/a", "file": "a.gguf"}, {"repo": "o/b", "file": "b.gguf", "location": "container"}]},
     "models[1].location: location 'container' differs from models[0]'s 'host'"),
    ({"models": [{"repo": "o/a", "file": "a.gguf"}, {"repo": "o/b", "file": "b.gguf"}],
      "clients": {"claude_code": {"models": {"small_fast": "nope"}}}},
     "clients.claude_code.models.small_fast: 'nope' is not a model alias here (aliases: a, b)"),
    ({"models": [{"repo": "o/a", "file": "a.gguf"}, {"repo": "o/b", "file": "b.gguf", "ctx_size": 8192}],
      "clients": {"claude_code": {"models": {"small_fast": "b"}}}},
     "models[1].ctx_size: context is 8192 tokens but Claude Code is configured (clients.claude_code) and uses b "
     "(small_fast)"),
    ({"models": [{"repo": "o/a", "file": "a.gguf", "preload": True}, {"repo": "o/b", "file": "b.gguf", "preload": True}],
      "server": {"models_max": 1}},
     "server.models_max: 2 models have preload: true (a, b) but only 1 may be loaded at once"),
    ({"models": [{"repo": "o/a", "file": "a.gguf", "alias": "haiku"}]},
     "'haiku' is one of the names the gateway keeps for Claude Code's slots"),
    ({"models": [{"repo": "o/a", "file": "a.gguf"}]}, "give model: (one model) or models: (a list), not both"),
])
def test_model_list_errors(data: dict, expected: str) -> None:
    full = {"model": None, **data} if "give model:" not in expected else data
    got = errors_of(full)
    assert any(expected in e for e in got), got


def test_a_small_model_off_the_claude_slots_may_have_a_small_context() -> None:
    cfg = config({"model": None, "models": [{"repo": "o/a", "file": "a.gguf"},
                                            {"repo": "o/b", "file": "b.gguf", "ctx_size": 4096}]})
    assert serving(cfg, cfg.models[1]).ctx_size == 4096


# -- reload instead of restart ------------------------------------------------------------------

def router_facts(cfg, *, preset_now="p1", preset_was="p1", now=None, was=None):
    now = now or {"coder": "c1", "small": "s1"}
    was = was if was is not None else dict(now)
    return converged(cfg, reload_now={"preset": preset_now, **now}, reload_was={"preset": preset_was, **was})


def plan(cfg, facts, **more):
    return [(c.action, c.summary) for c in ServicesStep(cfg).plan(ctx(cfg, {"services.ct": facts, **more}))]


def test_converged_router_plans_nothing() -> None:
    cfg = two()
    assert plan(cfg, router_facts(cfg)) == []


def test_an_added_model_reloads_the_router_and_restarts_only_the_gateway() -> None:
    cfg = two()
    one_before = config({"model": None, "models": TWO[:1] + [{"repo": "o/x", "file": "x.gguf", "alias": "x"}]})
    facts = router_facts(cfg, was={"coder": "c1", "x": "x1"})
    files = dict(facts.files)
    for path, content in desired_units(one_before, 252).items():
        files[path] = sha(content)
    got = plan(cfg, converged(cfg, files=files, reload_now=facts.reload_now, reload_was=facts.reload_was))
    actions = [a for a, _ in got]
    assert ("write", "write /etc/provision/llama-models.ini") in got
    assert not any(a == "restart" and "llama-server" in s for a, s in got)
    assert ("reload", "reload llama-server's models without a restart (add small; unload x)") in got
    assert any(a == "restart" and s.startswith("restart provision-gateway") for a, s in got)
    assert actions.index("reload") > actions.index("write")


def test_a_refreshed_file_unloads_just_that_model() -> None:
    cfg = two()
    got = plan(cfg, router_facts(cfg, now={"coder": "c2", "small": "s1"}, was={"coder": "c1", "small": "s1"}))
    assert got == [("reload", "reload llama-server's models without a restart (new files of coder)")]


def test_a_unit_change_restarts_the_router_and_records_what_it_took() -> None:
    cfg = two(server={"models_max": 1})
    facts = router_facts(cfg)
    files = {k: v for k, v in facts.files.items() if not k.endswith("llama-server.service")}
    got = plan(cfg, converged(cfg, files=files, reload_now=facts.reload_now, reload_was={}))
    assert [a for a, _ in got] == ["write", "restart"] and "reload" not in [a for a, _ in got]


def test_back_to_one_model_removes_the_preset() -> None:
    cfg = config()
    facts = converged(cfg)
    got = plan(cfg, converged(cfg, files={**facts.files, "/etc/provision/llama-models.ini": "x" * 64}))
    assert got == [("remove", "remove /etc/provision/llama-models.ini (one model: no router mode)")]


def test_reload_facts_parse() -> None:
    out = ("unit llama-server active enabled\nreload-now preset abc\nreload-now coder 111\n"
           "reload-was preset abc\nreload-was coder 000\n")
    sf = parse_services(out, 0)
    assert sf.reload_now == {"preset": "abc", "coder": "111"} and sf.reload_was == {"preset": "abc", "coder": "000"}
    assert sf.units["llama-server"] == UnitState("active", "enabled")


# -- model files: shapes, prune ------------------------------------------------------------------

SHAPE = {"arch": "llama", "n_layers": 32, "n_embd": 4096, "n_head": 32, "n_head_kv": 8, "head_dim_k": 128,
         "head_dim_v": 128, "n_ctx_train": 131072}
GIB = 1 << 30


def files_of(cfg, sizes: dict[str, int], shapes: dict[str, dict] | None = None, ours=None) -> ModelFacts:
    from provisioner.facts.services import model_roles

    out = {}
    for role, _, spec in model_roles(cfg):
        if spec.filename in sizes:
            side = {"size": sizes[spec.filename], "mtime": 1, "sha256": "a" * 64,
                    "source": {"repo": spec.repo, "file": spec.file, "revision": spec.revision}}
            out[role] = FileState(sizes[spec.filename], 1, side, (shapes or {}).get(spec.filename, SHAPE))
    return ModelFacts(files=out, dir_exists=True, ours=ours or {})


def test_model_facts_read_shapes_and_our_files() -> None:
    out = ('dir 1\navail 99\nfile model 10 5\nsidecar model {"size": 10}\nshape model {"arch": "llama"}\n'
           "ours 10 a.gguf\nours 20 old model.gguf\n")
    mf = parse_model(out, 0)
    assert mf.files["model"].shape == {"arch": "llama"} and mf.ours == {"a.gguf": 10, "old model.gguf": 20}


def test_prune_deletes_only_with_the_flag() -> None:
    cfg = two()
    mf = files_of(cfg, {"coder-Q4_K_M.gguf": GIB, "tiny.gguf": 1, "small-Q8_0.gguf": GIB},
                  ours={"coder-Q4_K_M.gguf": GIB, "old.gguf": 7})
    plain = ctx(cfg, {"model.host": mf})
    assert ModelStep(cfg).plan(plain) == []
    assert any("up --prune` deletes it" in n for n in plain.notes)
    pruning = ctx(cfg, {"model.host": mf})
    pruning.prune = True
    assert [(c.action, c.summary) for c in ModelStep(cfg).plan(pruning)] == [
        ("delete", "delete /var/lib/provision/models/old.gguf: no model lists it (--prune)")]


def test_refresh_plans_a_fresh_download_for_a_moved_revision_only() -> None:
    cfg = two()
    mf = files_of(cfg, {"coder-Q4_K_M.gguf": GIB, "tiny.gguf": 1, "small-Q8_0.gguf": GIB})
    c = ctx(cfg, {"model.host": mf, "model.upstream": {"model": {"sha256": "a" * 64, "commit": "1" * 40},
                                                         "model.small": {"sha256": "b" * 64, "commit": "2" * 40}}})
    got = [(ch.action, ch.summary) for ch in ModelStep(cfg).plan(c)]
    assert got == [("download", "download models[1] small-Q8_0.gguf: main moved upstream: sha256 aaaaaaaaaaaa… → "
                                "bbbbbbbbbbbb… (commit 222222222222)")]


def test_pinned_revisions_are_not_asked_about(monkeypatch) -> None:
    from provisioner.operations import model_refresh

    asked = []
    monkeypatch.setattr(model_refresh, "head", lambda url, token: asked.append(url) or {"sha256": ""})
    cfg = config({"model": None, "models": [{"repo": "o/a", "file": "a.gguf", "revision": "f" * 40},
                                            {"repo": "o/b", "file": "b.gguf", "revision": "v2"}]})
    assert list(model_refresh.upstream_revisions(cfg)) == ["model.b"]
    assert asked == ["https://huggingface.co/o/b/resolve/v2/b.gguf"]


# -- VRAM -------------------------------------------------------------------------------------------

def test_budget_sums_the_largest_that_can_be_resident() -> None:
    cfg = two(server={"models_max": 1})
    mf = files_of(cfg, {"coder-Q4_K_M.gguf": 4 * GIB, "tiny.gguf": GIB // 2, "small-Q8_0.gguf": 2 * GIB})
    b = budget(cfg, mf, 24564)
    # coder: 4 GiB + KV 32 layers × 65536 × (1024 + 1024) × 18/32 bytes = 2.25 GiB, + the 0.5 GiB draft
    assert [n.alias for n in b.resident] == ["coder"] and round(b.need_mib) == 4096 + 2304 + 512 and b.fits
    b2 = budget(two(), mf, 8192)
    assert [n.alias for n in b2.resident] == ["coder", "small"] and not b2.fits and b2.over() == ["small"]
    assert "coder: file 4096 MiB + KV cache 2304 MiB (65536 tokens, k q4_0, v q4_0" in b2.figures()


def test_an_over_commit_is_refused_before_any_unit_is_written() -> None:
    cfg = two(gpu={"enabled": True})
    mf = files_of(cfg, {"coder-Q4_K_M.gguf": 16 * GIB, "tiny.gguf": GIB, "small-Q8_0.gguf": 8 * GIB})
    gpus = {"nvidia.gpus": [GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9", 24564, "00000000:01:00.0", 0)],
            "nvidia.driver": DriverVersion("595.71.05", "sys")}
    with pytest.raises(ConfigError) as info:
        ServicesStep(cfg).plan(ctx(cfg, {"services.ct": router_facts(cfg), "model.host": mf, **gpus}))
    msg = str(info.value)
    assert "more than the 24564 MiB of NVIDIA GeForce RTX 4090; does not fit: small" in msg
    assert "2 at once (server.models_max)" in msg and "server.models_max" in msg
    # one loaded at a time fits: the plan goes on
    fine = two(gpu={"enabled": True}, server={"models_max": 1})
    ServicesStep(fine).plan(ctx(fine, {"services.ct": router_facts(fine), "model.host": mf, **gpus}))


# -- the gateway's table ----------------------------------------------------------------------------

def table(**over) -> ModelTable:
    values = {"local_model_id": "coder", "models": {"coder": "coder", "small": "small"},
              "claude_slots": {"main": "coder", "small_fast": "small"}, "model_aliases": {"fast": "small"}, **over}
    import dataclasses

    return ModelTable.from_settings(dataclasses.replace(GatewaySettings(), **values))


@pytest.mark.parametrize("requested, upstream", [
    ("coder", "coder"), ("small", "small"), ("fast", "small"), ("main", "coder"), ("small_fast", "small"),
    ("opus", "coder"), ("sonnet", "coder"), ("haiku", "small"), ("claude-haiku-4-5-20251001", "small"),
    ("claude-3-5-haiku-20241022", "small"), ("claude-opus-4-1", "coder"), ("claude-sonnet-4-5", "coder"),
    ("gpt-4o", None)])
def test_routing(requested: str, upstream: str | None) -> None:
    assert table().resolve(requested) == upstream


def test_without_claude_names_only_aliases_and_slots() -> None:
    t = table(accept_claude_models=False)
    assert t.resolve("claude-sonnet-4-5") is None and t.resolve("main") == "coder"


def test_an_old_gateway_config_serves_its_one_model_everywhere() -> None:
    t = ModelTable.from_settings(GatewaySettings(local_model_id="smollm2"))
    assert t.models == {"smollm2": "smollm2"} and t.slots == {"main": "smollm2", "small_fast": "smollm2"}
    assert t.resolve("claude-haiku-4-5") == "smollm2"


def test_not_found_names_what_exists() -> None:
    err = table().not_found("gpt-4o")
    assert (err.status, err.error_type) == (404, "not_found_error")
    assert err.message == ("model: gpt-4o (this gateway serves: coder, small, fast; Claude Code's names (opus, "
                           "sonnet, haiku, claude-…) map to coder (main) and small (small_fast))")


def test_bad_slot_tables_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a served model"):
        table(claude_slots={"main": "nope"})
    with pytest.raises(ConfigError, match="unknown Claude Code slot"):
        table(claude_slots={"background": "small"})


def test_listing_has_both_shapes() -> None:
    page = table().page("2026-01-02T03:04:05Z")
    assert page["object"] == "list" and page["has_more"] is False and (page["first_id"], page["last_id"]) == \
        ("coder", "fast")
    first = page["data"][0]
    assert first == {"type": "model", "id": "coder", "display_name": "coder (main)",
                     "created_at": "2026-01-02T03:04:05Z", "object": "model", "created": 1767323045,
                     "owned_by": "provision"}


def test_adding_a_model_leaves_the_router_unit_alone() -> None:
    """Found on the simulated node: a default --models-max of "the list's length" changed the unit
    (a router restart) whenever a model was added."""
    unit = "/etc/systemd/system/llama-server.service"
    three = config({"model": None, "models": TWO + [{"repo": "o/x", "file": "x.gguf", "alias": "x"}]})
    assert desired_units(two(), 252)[unit] == desired_units(three, 252)[unit]
    assert desired_units(two(), 252)["/etc/provision/llama-models.ini"] != \
        desired_units(three, 252)["/etc/provision/llama-models.ini"]
