"""Several models behind one endpoint on the simulated node: real LXC, systemd, llama-server in
router mode with two real models (SmolLM2-135M, Gemma 3 270M), the real gateway.

CT 188 is brought up once for the module with the real CLI. Then: both models answer through the
gateway by alias and by Claude Code's names (told apart by their tokenizers), ``/v1/models`` lists
both in both shapes, a third model is added and removed with a reload that keeps the other models'
processes, each change converges to zero changes on re-run, ``--prune`` deletes only the file we
pushed, and a VRAM over-commit is refused by the plan with the figures.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from provisioner.sim import assets
from provisioner.sim.hostfile import host_data

from . import test_services_sim as svc
from .llama_bin import install_script, llama_server
from .test_services_sim import applied, ct, provision, report, write

pytestmark = [pytest.mark.sim, pytest.mark.timeout(3000)]
VMID = 188
MODELS_DIR = Path("/var/lib/provision-services-test") / f"many-models-{os.getpid()}"
PROBE = "Tokenizers differ: naïve café, 12345 Straße; ünïcödé — 東京 — def f(x): return x ** 2"


def entry(path: Path, alias: str, **more) -> dict:
    return {"path": str(path), "alias": alias, "host_dir": str(MODELS_DIR), **more}


@pytest.fixture(scope="module")
def host(sim_node, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("many-models")
    svc.SNAPSHOT[:] = [svc.snapshot(tmp / "src")]
    third = tmp / "SmolLM2-copy.gguf"  # a third real model file: the same weights under another name
    shutil.copyfile(assets.smollm2_model(), third)
    models = [entry(assets.smollm2_model(), "smol", override_kv=["llama.context_length=int:32768"]),
              entry(assets.gemma3_model(), "gemma")]
    data = host_data(sim_node.conn, vmid=VMID, gpu=False, extra={
        "llama_cpp": {"backend": "cpu", "source": {"tarball": str(assets.llama_source())}},
        "models": models,
        "server": {"host": "0.0.0.0", "ctx_size": 32768, "threads": 2, "health_timeout": 300,
                   "cache_type_k": "f16", "cache_type_v": "f16"},
        "container": {"memory_mb": 4096},
        "clients": {"pi": True, "claude_code_router": True, "output_dir": str(tmp / "clients"),
                    "claude_code": {"models": {"main": "smol", "small_fast": "gemma"}}},
    })
    path = write(tmp / "host.yaml", data)
    first = report(provision("--json", "up", str(path), "--yes", only=("--only", "container,model")))
    code, _, err = sim_node.run(f"pct exec {VMID} -- sh -c {shlex.quote(install_script('many1'))}",
                                stdin=llama_server().read_bytes())
    assert code == 0, err
    rep = report(provision("--json", "up", str(path), "--yes"))
    steps = [(s, a) for s, a, _ in applied(first) + applied(rep)]
    for expected in [("model", "push"), ("services", "start"), ("verify", "verify")]:
        assert expected in steps, steps
    print(f"\nmany models: first up {first['seconds'] + rep['seconds']:.0f} s, timings {rep['timings']}")
    ip = data["container"]["network"]["ip"].split("/")[0]
    yield {"path": path, "data": data, "tmp": tmp, "third": third, "url": f"http://{ip}:4000", "ip": ip}
    sim_node.destroy_ct(VMID)
    shutil.rmtree(MODELS_DIR, ignore_errors=True)


def gateway(sim_node, host) -> anthropic.Anthropic:
    key = ct(sim_node, {"vmid": VMID}, "head -n1 /etc/provision/gateway.key")
    return anthropic.Anthropic(base_url=host["url"], api_key=key, max_retries=0, timeout=300)


def children(sim_node) -> dict[str, str]:
    """alias -> pid of the router's child process serving it (inside the CT)."""
    out = ct(sim_node, {"vmid": VMID}, "main=$(systemctl show -p MainPID --value llama-server); "
             "for p in $(pgrep -P $main); do echo \"$p $(tr '\\0' ' ' < /proc/$p/cmdline)\"; done")
    got = {}
    for line in out.splitlines():
        words = line.split()
        if "--alias" in words:
            got[words[words.index("--alias") + 1]] = words[0]
    return got


def count(client: anthropic.Anthropic, model: str) -> int:
    return client.messages.count_tokens(model=model, messages=[{"role": "user", "content": PROBE}]).input_tokens


def test_both_answer_by_alias_and_by_slot_name(sim_node, host) -> None:
    gw = gateway(sim_node, host)
    for name in ("smol", "gemma", "claude-sonnet-4-5", "claude-haiku-4-5-20251001"):
        msg = gw.messages.create(model=name, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        assert msg.type == "message" and msg.model == name and msg.usage.output_tokens >= 1
    smol, gemma = count(gw, "smol"), count(gw, "gemma")
    assert smol != gemma
    assert count(gw, "claude-sonnet-4-5") == count(gw, "opus") == smol
    assert count(gw, "claude-haiku-4-5-20251001") == count(gw, "haiku") == gemma
    assert set(children(sim_node)) == {"smol", "gemma"}
    with pytest.raises(anthropic.NotFoundError) as info:
        gw.messages.create(model="gpt-4o", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert "this gateway serves: smol, gemma" in info.value.body["error"]["message"]


def test_models_listed_in_both_shapes(sim_node, host) -> None:
    gw = gateway(sim_node, host)
    assert [m.id for m in gw.models.list().data] == ["smol", "gemma"]
    oai = openai.OpenAI(base_url=host["url"] + "/v1", api_key=gw.api_key, max_retries=0)
    assert [m.id for m in oai.models.list().data] == ["smol", "gemma"]


def test_second_up_changes_nothing(sim_node, host) -> None:
    rep = report(provision("--json", "up", str(host["path"]), "--yes"))
    assert rep["applied"] == [] and rep["ssh_round_trips"] <= 3
    print(f"\nmany models no-op up: {rep['seconds']} s, {rep['ssh_round_trips']} SSH round trips")


def test_clients_carry_the_slots_and_every_model(sim_node, host) -> None:
    provision("clients", str(host["path"]), "--write")
    clients = host["tmp"] / "clients"
    env = json.loads((clients / "claude-code" / "settings.json").read_text())["env"]
    assert (env["ANTHROPIC_MODEL"], env["ANTHROPIC_DEFAULT_HAIKU_MODEL"], env["ANTHROPIC_SMALL_FAST_MODEL"]) == \
        ("smol", "gemma", "gemma")
    pi = json.loads((clients / "pi" / "models.json").read_text())["providers"]["llama-local"]["models"]
    assert [(m["id"], m["contextWindow"]) for m in pi] == [("smol", 32768), ("gemma", 32768)]
    ccr = json.loads((clients / "claude-code-router" / "config.json").read_text())
    assert ccr["Providers"][0]["models"] == ["smol", "gemma"] and ccr["Router"]["background"] == "llama-local,gemma"


def test_adding_and_removing_a_model_reloads_and_converges(sim_node, host, tmp_path) -> None:
    gw = gateway(sim_node, host)
    gw.messages.create(model="smol", max_tokens=1, messages=[{"role": "user", "content": "a"}])
    gw.messages.create(model="gemma", max_tokens=1, messages=[{"role": "user", "content": "a"}])
    router = ct(sim_node, {"vmid": VMID}, "systemctl show -p MainPID --value llama-server")
    before = children(sim_node)
    data = yaml.safe_load(host["path"].read_text())
    data["models"].append(entry(host["third"], "smol2", override_kv=["llama.context_length=int:32768"]))
    added = write(tmp_path / "added.yaml", data)
    rep = report(provision("--json", "up", str(added), "--yes"))
    print(f"\nadding a model: up {rep['seconds']:.1f} s, timings {rep['timings']}")  # measured figures (-s)
    got = [(s, a) for s, a, _ in applied(rep)]
    assert ("model", "push") in got and ("services", "reload") in got and ("verify", "verify") in got, got
    assert not any(s == "services" and a == "restart" and "llama-server" in t for s, a, t in applied(rep))
    assert ct(sim_node, {"vmid": VMID}, "systemctl show -p MainPID --value llama-server") == router
    now = children(sim_node)
    assert {a: now[a] for a in ("smol", "gemma")} == before  # the other models kept their processes
    assert "smol2" in now  # verify asked it for a token
    assert report(provision("--json", "up", str(added), "--yes"))["applied"] == []
    assert gateway(sim_node, host).messages.create(model="smol2", max_tokens=1,
                                                   messages=[{"role": "user", "content": "b"}]).model == "smol2"
    # removed again: the router unloads it, the others keep running; the file stays until --prune
    rep = report(provision("--json", "up", str(host["path"]), "--yes"))
    print(f"\nremoving a model: up {rep['seconds']:.1f} s, timings {rep['timings']}")
    assert ("services", "reload") in [(s, a) for s, a, _ in applied(rep)]
    assert ct(sim_node, {"vmid": VMID}, "systemctl show -p MainPID --value llama-server") == router
    assert set(children(sim_node)) == {"smol", "gemma"}
    assert any("`provision up --prune` deletes it" in n for n in rep["notes"]), rep["notes"]
    assert (MODELS_DIR / "SmolLM2-copy.gguf").exists()
    assert report(provision("--json", "up", str(host["path"]), "--yes"))["applied"] == []
    foreign = MODELS_DIR / "mine.gguf"  # a file we did not fetch: --prune never touches it
    foreign.write_bytes(b"GGUF")
    rep = report(provision("--json", "up", str(host["path"]), "--yes", "--prune"))
    assert [(s, a) for s, a, _ in applied(rep)] == [("model", "delete")]
    assert not (MODELS_DIR / "SmolLM2-copy.gguf").exists() and foreign.exists()
    assert not list(MODELS_DIR.glob("SmolLM2-copy.gguf*"))
    assert report(provision("--json", "up", str(host["path"]), "--yes", "--prune"))["applied"] == []


def test_a_vram_over_commit_is_refused_with_the_figures(sim_node, host, tmp_path) -> None:
    """The simulated node's RTX 4090 (24564 MiB) cannot hold both models with 1M-token f16 KV caches."""
    data = yaml.safe_load(host["path"].read_text())
    data["gpu"] = {"enabled": True}
    for m in data["models"]:
        m["ctx_size"] = 1048576
    over = write(tmp_path / "over.yaml", data)
    proc = provision("plan", str(over), "--only", "services", check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    print(f"\nthe refusal:\n{err}")
    assert "more than the 24564 MiB of NVIDIA GeForce RTX 4090" in " ".join(err.split()), err
    assert "smol: file 94 MiB + KV cache 23040 MiB (1048576 tokens" in err, err
    assert "gemma: file" in err and "2 at once (server.models_max)" in err and "server.models_max" in err
    data["server"]["models_max"] = 1  # one at a time fits: the router swaps them
    fine = write(tmp_path / "fine.yaml", data)
    assert provision("plan", str(fine), "--only", "services", check=False).returncode == 0
