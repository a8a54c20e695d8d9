"""Two real models behind one endpoint, without a simulated node: the cached static llama-server
in router mode with the preset and command line the services step writes, the real gateway with
the config the services step writes, SmolLM2-135M and Gemma 3 270M.

Which model answered is proven by its tokenizer: the two count the same text differently, so
``count_tokens`` through a name tells which upstream model that name reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest
from local_http import free_port, wait_http

from provisioner.facts.services import LLAMA_BIN, MODELS_PRESET, SERVER_KEY
from provisioner.operations.units import gateway_config, models_preset, router_args
from provisioner.sim import assets

from .helpers import config
from .llama_bin import llama_server

ROOT = Path(__file__).resolve().parents[2]
LLAMA_KEY = "router-llama-key-4c1d9e"
GW_KEY = "router-gateway-key-83ab02"
PROBE = "Tokenizers differ: naïve café, 12345 Straße; ünïcödé — 東京 — def f(x): return x ** 2"


def host_file(smol_ctx: int = 4096):
    smol, gemma = assets.smollm2_model(), assets.gemma3_model()
    assert smol.parent == gemma.parent  # one models directory, as the host file requires
    entry = {"location": "container", "dir": str(smol.parent)}
    return config({"model": None, "clients": {"claude_code": {"enabled": False, "models": {
                       "main": "smol", "small_fast": "gemma"}}},
                   "server": {"ctx_size": 4096, "threads": 2, "cache_type_k": "f16", "cache_type_v": "f16"},
                   "models": [{"path": str(smol), "alias": "smol", "ctx_size": smol_ctx, **entry},
                              {"path": str(gemma), "alias": "gemma", **entry}]})


class Router:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = tmp / "llama.key"
        self.key.write_text(LLAMA_KEY + "\n")
        (tmp / "gw.key").write_text(GW_KEY + "\n")
        self.preset = tmp / "models.ini"
        self.port, self.gw_port = free_port(), free_port()
        self.url, self.gw_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.gw_port}"
        self.procs: list[subprocess.Popen] = []

    def write_preset(self, cfg) -> None:
        self.preset.write_text(models_preset(cfg))

    def start(self, cfg) -> "Router":
        self.write_preset(cfg)
        swap = {LLAMA_BIN: str(llama_server()), MODELS_PRESET: str(self.preset), SERVER_KEY: str(self.key),
                "8080": str(self.port)}
        argv = [swap.get(a, a) for a in router_args(cfg)]
        log = self.tmp / "llama.log"
        env = {**os.environ, "LLAMA_CACHE": str(self.tmp / "no-cache")}
        with open(log, "w") as fh:
            self.procs.append(subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env))
        wait_http(self.url + "/health", self.procs[-1], log=log)
        gw = json.loads(gateway_config(cfg))
        gw.update(listen_host="127.0.0.1", listen_port=self.gw_port, upstream_url=self.url,
                  api_key_file=str(self.tmp / "gw.key"), upstream_api_key_file=str(self.key))
        (self.tmp / "gw.json").write_text(json.dumps(gw))
        glog = self.tmp / "gw.log"
        with open(glog, "w") as fh:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config",
                                                str(self.tmp / "gw.json")], stdout=fh, stderr=subprocess.STDOUT,
                                               env={**os.environ, "PYTHONPATH": str(ROOT)}))
        wait_http(self.gw_url + "/", self.procs[-1], 60, glog)
        return self

    def models(self, reload: bool = False) -> dict[str, dict]:
        req = urllib.request.Request(self.url + "/models" + ("?reload=1" if reload else ""),
                                     headers={"Authorization": f"Bearer {LLAMA_KEY}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return {m["id"]: m for m in json.load(r)["data"]}

    def children(self) -> dict[str, int]:
        """alias -> pid of the router's child serving it."""
        out = {}
        router = self.procs[0].pid
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) == router and b"--alias" in argv:
                out[argv[argv.index(b"--alias") + 1].decode()] = int(d.name)
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    r = Router(tmp_path_factory.mktemp("router")).start(host_file())
    yield r
    r.stop()


def client(r: Router) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=r.gw_url, api_key=GW_KEY, max_retries=0, timeout=300)


def count(r: Router, model: str) -> int:
    return client(r).messages.count_tokens(model=model, messages=[{"role": "user", "content": PROBE}]).input_tokens


def test_both_models_answer_by_alias_and_by_claude_code_slot(router: Router) -> None:
    for alias in ("smol", "gemma"):
        msg = client(router).messages.create(model=alias, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert msg.model == alias and msg.usage.output_tokens >= 1
    status = {k: v["status"]["value"] for k, v in router.models().items()}
    assert status == {"smol": "loaded", "gemma": "loaded"}
    smol, gemma = count(router, "smol"), count(router, "gemma")
    assert smol != gemma, "the two tokenizers must tell the models apart"
    # Claude Code's names reach the models the slot mapping names (main: smol, small_fast: gemma)
    for name in ("main", "opus", "sonnet", "claude-sonnet-4-5-20250929", "claude-opus-4-1"):
        assert count(router, name) == smol, name
    for name in ("small_fast", "haiku", "claude-haiku-4-5-20251001", "claude-3-5-haiku-20241022"):
        assert count(router, name) == gemma, name
    streamed = client(router).messages.create(model="claude-haiku-4-5", max_tokens=3, stream=True,
                                              messages=[{"role": "user", "content": "Hi"}])
    events = [e.type for e in streamed]
    assert events[0] == "message_start" and events[-1] == "message_stop"


def test_models_list_in_both_shapes(router: Router) -> None:
    page = client(router).models.list()
    assert [m.id for m in page.data] == ["smol", "gemma"] and page.data[0].type == "model"
    oai = openai.OpenAI(base_url=router.gw_url + "/v1", api_key=GW_KEY, max_retries=0)
    assert [m.id for m in oai.models.list().data] == ["smol", "gemma"]
    assert oai.models.list().data[1].object == "model"


def test_an_unknown_model_is_not_found_naming_the_models(router: Router) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client(router).messages.create(model="gpt-4o", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    error = info.value.body["error"]
    assert error["type"] == "not_found_error" and "this gateway serves: smol, gemma" in error["message"]


def test_a_reload_keeps_the_unchanged_model_running(router: Router) -> None:
    """What `up` relies on to add, change or remove a model without restarting the others
    (tools/server/server-models.cpp:861-906): after a preset change and GET /models?reload=1 the
    unchanged model keeps its process, the changed one is unloaded and loads again on demand."""
    client(router).messages.create(model="smol", max_tokens=1, messages=[{"role": "user", "content": "a"}])
    client(router).messages.create(model="gemma", max_tokens=1, messages=[{"role": "user", "content": "a"}])
    before = router.children()
    assert set(before) == {"smol", "gemma"}
    router.write_preset(host_file(smol_ctx=2048))
    status = {k: v["status"]["value"] for k, v in router.models(reload=True).items()}
    assert status == {"smol": "unloaded", "gemma": "loaded"}
    assert router.children() == {"gemma": before["gemma"]}
    msg = client(router).messages.create(model="smol", max_tokens=1, messages=[{"role": "user", "content": "b"}])
    assert msg.model == "smol" and router.children()["gemma"] == before["gemma"]
    assert router.children()["smol"] != before["smol"]


def test_bench_measures_each_model_through_the_router(router: Router) -> None:
    """`provision bench`'s real script, once per model (what `bench` does for every alias): the
    direct requests reach the named model, /props is asked for that model."""
    import subprocess as sp

    from provisioner.bench.runner import (
        BenchOptions,
        config_params,
        models_to_measure,
        run_in_ct,
    )
    from provisioner.connectors.ssh import Result

    class Shell:
        vmid = 0

        def run(self, text, *, timeout=None, on_line=None):
            proc = sp.run(["bash", "-s"], input=text, capture_output=True, text=True, timeout=timeout, check=False)
            return Result("bash -s", proc.returncode, proc.stdout, proc.stderr)

    cfg = host_file()
    opts = BenchOptions(prompt_tokens=300, gen_tokens=4, runs=1, warmup=0, timeout=300, gateway=False)
    assert models_to_measure(cfg, None) == ["smol", "gemma"]
    with pytest.raises(Exception, match="no model nope"):
        models_to_measure(cfg, ["nope"])
    seen = {}
    for alias in models_to_measure(cfg, None):
        p = config_params(cfg, opts, alias)
        assert p["router"] is True and p["model_id"] == alias
        p.update(llama_url=router.url, llama_key_file=str(router.key), build_stamp=None, unit_file=None)
        raw = run_in_ct(Shell(), p)
        seen[alias] = raw
        assert raw["environment"]["model_alias"] == alias, raw["environment"]
    # the two models' own tokenizers: the same prompt has a different length in each
    prompt_n = {a: r["runs"][0]["direct"]["prompt_n"] for a, r in seen.items()}
    assert prompt_n["smol"] != prompt_n["gemma"], prompt_n


def _race(llama_url: str, gw_url: str, long_model: str, short_model: str) -> dict[str, float]:
    """A long generation on the main model (160 tokens, EOS ignored so the length is fixed; straight
    to llama-server), then a short request through the gateway on Claude Code's background name
    while it runs: when each finished (seconds from the long one's start)."""
    import threading

    c = anthropic.Anthropic(base_url=gw_url, api_key=GW_KEY, max_retries=0, timeout=600)
    for model in (long_model, short_model):  # both loaded (and warm) before the measurement
        c.messages.create(model=model, max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    done: dict[str, float] = {}
    errors: list[BaseException] = []
    started = threading.Event()
    body = json.dumps({"model": long_model, "max_tokens": 160, "ignore_eos": True, "stream": True,
                       "messages": [{"role": "user", "content": "Count from 1 to 200."}]}).encode()
    t0 = time.monotonic()

    def long() -> None:
        try:
            req = urllib.request.Request(llama_url + "/v1/chat/completions", data=body, headers={
                "Authorization": f"Bearer {LLAMA_KEY}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                for line in r:
                    if line.startswith(b"data: {"):
                        started.set()
            done["long"] = time.monotonic() - t0
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            started.set()

    th = threading.Thread(target=long)
    th.start()
    assert started.wait(300) and not errors, errors
    done["short_sent"] = time.monotonic() - t0
    with c.messages.stream(model=short_model, max_tokens=4,
                           messages=[{"role": "user", "content": "Title: hello"}]) as s:
        for _ in s.text_stream:
            done.setdefault("short_first", time.monotonic() - t0)
    done["short"] = time.monotonic() - t0
    th.join(600)
    assert not errors, errors
    return done


def test_background_requests_do_not_wait_for_the_main_slot(router: Router, tmp_path: Path) -> None:
    """The measured effect of a second model (README): Claude Code's background request (its haiku
    name) runs in the small model's own process while the main model generates, instead of queueing
    behind it on the one slot (--parallel 1) of a single-model server."""
    two = _race(router.url, router.gw_url, "smol", "claude-haiku-4-5")
    one = Router(tmp_path)
    # a list of one: the single-model server with one slot (server.background_slot: 0; its default
    # second slot is the other answer to the same problem, tested in tests/services)
    cfg = config({"model": None, "models": [{"path": str(assets.smollm2_model()), "alias": "smol",
                                             "location": "container", "dir": str(assets.smollm2_model().parent)}],
                  "clients": {"claude_code": False},
                  "server": {"ctx_size": 4096, "threads": 2, "background_slot": 0}})
    from provisioner.operations.units import llama_args

    swap = {LLAMA_BIN: str(llama_server()), SERVER_KEY: str(one.key), "8080": str(one.port)}
    log = tmp_path / "single.log"
    with open(log, "w") as fh:
        one.procs.append(subprocess.Popen([swap.get(a, a) for a in llama_args(cfg)], stdout=fh,
                                          stderr=subprocess.STDOUT))
    try:
        wait_http(one.url + "/health", one.procs[-1], log=log)
        gw = json.loads(gateway_config(cfg))
        gw.update(listen_host="127.0.0.1", listen_port=one.gw_port, upstream_url=one.url,
                  api_key_file=str(one.tmp / "gw.key"), upstream_api_key_file=str(one.key))
        (tmp_path / "gw.json").write_text(json.dumps(gw))
        with open(tmp_path / "gw.log", "w") as fh:
            one.procs.append(subprocess.Popen([sys.executable, "-m", "provisioner.gateway", "--config",
                                               str(tmp_path / "gw.json")], stdout=fh, stderr=subprocess.STDOUT,
                                              env={**os.environ, "PYTHONPATH": str(ROOT)}))
        wait_http(one.gw_url + "/", one.procs[-1], 60, tmp_path / "gw.log")
        single = _race(one.url, one.gw_url, "smol", "claude-haiku-4-5")
    finally:
        one.stop()
    def show(d: dict[str, float]) -> str:
        return (f"sent {d['short_sent']:.1f}, first token {d['short_first']:.1f}, answered {d['short']:.1f}, "
                f"main done {d['long']:.1f}")

    print(f"\nbackground request while the main one generates (s after the main request started): "
          f"two models: {show(two)}; one model (--parallel 1): {show(single)}")
    assert two["short_first"] < two["long"], two  # it did not wait for the main request
    assert single["short_first"] >= single["long"] - 0.5, single  # it queued behind it on the one slot
