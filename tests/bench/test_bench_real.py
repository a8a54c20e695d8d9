"""The measurement against a real llama-server and the real gateway on 127.0.0.1.

The script ``provision bench`` sends into the container (``runner.script``: the bash
template with measure.py inside) runs here with ``bash -s`` exactly as ``pct exec``
would run it, through ``runner.run_in_ct``; only the hop into the container differs.
Small prompt, 16 tokens, 1 warm-up + 2 runs, so the module takes about a minute.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import GATEWAY_KEY, LLAMA_KEY
from rich.console import Console

from provisioner.bench import measure
from provisioner.bench.prompt import coding_prompt
from provisioner.bench.report import SCHEMA, build_report, render_table
from provisioner.bench.runner import (
    BenchOptions,
    params_for,
    public_params,
    run_in_ct,
    script,
)
from provisioner.cli.bench import write_report
from provisioner.connectors.ssh import Result
from provisioner.errors import ProvisionError
from provisioner.redact import MASK

GEN = 16


class LocalShell:
    """Runs a script with ``bash -s`` on this machine, the way ``CT.run`` runs it in the container."""

    vmid = 0

    def __init__(self) -> None:
        self.stdout = ""

    def run(self, text: str, *, timeout: float | None = None, on_line=None) -> Result:
        proc = subprocess.run(["bash", "-s"], input=text, capture_output=True, text=True, timeout=timeout,
                              check=False)
        self.stdout = proc.stdout
        for line in proc.stdout.splitlines():
            if on_line:
                on_line(line)
        return Result("bash -s", proc.returncode, proc.stdout, proc.stderr)


def params(stack, **kw):
    opts = kw.pop("opts", BenchOptions(prompt_tokens=2300, gen_tokens=GEN, runs=2, warmup=1, timeout=300))
    values = {"llama_url": stack.llama_url, "gateway_url": stack.gateway_url, "model_id": "smollm2",
              "llama_key_file": str(stack.llama_key), "gateway_key_file": str(stack.gateway_key),
              "unit_file": str(stack.unit), "build_stamp": None}
    values.update(kw)
    return params_for(opts, **values)


@pytest.fixture(scope="module")
def measured(stack):
    shell = LocalShell()
    p = params(stack)
    seen: list[str] = []
    raw = run_in_ct(shell, p, status=seen.append)
    return {"params": p, "raw": raw, "stdout": shell.stdout, "status": seen}


def test_numbers_are_sane_and_consistent(measured):
    raw = measured["raw"]
    runs = raw["runs"]
    assert [r["warmup"] for r in runs] == [True, False, False]
    assert [r["order"] for r in runs] == [["direct", "gateway"], ["gateway", "direct"], ["direct", "gateway"]]
    assert measured["status"][0].startswith("warm-up") and measured["status"][-1].startswith("run 2/2")
    for r in runs:
        d, g, o = r["direct"], r["gateway"], r["overhead"]
        # the server's own timings agree with its counts
        assert d["prompt_n"] > 1000 and d["prompt_ms"] > 0 and d["pp_tps"] > 0
        assert d["pp_tps"] == pytest.approx(d["prompt_n"] / d["prompt_ms"] * 1000, rel=0.01)
        # llama.cpp counts n tokens over n-1 or n decode steps depending on the build
        per_ms = d["predicted_ms"] / 1000
        assert (d["output_tokens"] - 1) / per_ms * 0.99 <= d["tg_tps"] <= d["output_tokens"] / per_ms * 1.01
        assert 1 <= d["output_tokens"] <= GEN
        assert d["cache_n"] < 16  # a fresh nonce: at most the chat template's fixed opening was reused
        # TTFT includes the prefill, and the request took longer than both
        assert d["prompt_ms"] / 1000 <= d["ttft_s"] < d["wall_s"]
        assert 0 < g["ttft_s"] < g["wall_s"]
        assert 1 <= g["output_tokens"] <= GEN
        # the same prompt through both paths: token counts differ by the nonce only
        assert abs(g["prompt_tokens"] - d["prompt_tokens"]) <= 8
        assert g["cache_n"] < 16  # at most the chat template's fixed opening was reused
        assert g["pp_tps"] == pytest.approx(g["prompt_tokens"] / g["ttft_s"])
        assert o["ttft_ratio"] == pytest.approx(g["ttft_s"] / d["ttft_s"])
        assert o["ttft_added_s"] == pytest.approx(g["ttft_s"] - d["ttft_s"])
        if g["output_tokens"] == d["output_tokens"]:
            assert o["wall_ratio"] == pytest.approx(g["wall_s"] / d["wall_s"])
        else:
            assert o["wall_ratio"] is None
        if g["tg_tps_client"] is not None:
            assert o["tg_ratio"] == pytest.approx(g["tg_tps_client"] / d["tg_tps_client"])
        # client-side and server-side generation speed of the direct path agree roughly
        assert d["tg_tps_client"] == pytest.approx(d["tg_tps"], rel=0.5)
    env = raw["environment"]
    assert env["n_ctx"] == 4096 and env["total_slots"] == 1 and env["model_params"] > 1e8
    assert env["server_command"].split()[0].endswith("llama-server") and "\\" not in env["server_command"]


def test_report_schema_table_and_file(measured, tmp_path):
    report = build_report(measured["raw"], params=public_params(measured["params"]),
                          target={"node": "sim", "vmid": 100, "hostname": "llm"})
    assert report["schema"] == SCHEMA and len(report["runs"]) == 2 and len(report["warmup"]) == 1
    assert set(report) >= {"date", "target", "model", "gpus", "llama_cpp", "server", "params", "summary"}
    assert report["model"]["id"] == "smollm2" and report["model"]["ftype"] == "Q4_1"
    assert report["server"]["flags"][0].endswith("llama-server") and "--metrics" in report["server"]["flags"]
    for key in ("direct.pp_tps", "direct.tg_tps", "direct.ttft_s", "gateway.tg_tps", "gateway.ttft_s",
                "overhead.ttft_ratio"):
        s = report["summary"][key]
        assert s["n"] == 2 and s["min"] <= s["median"] <= s["max"] and s["min"] <= s["p10"] <= s["p90"] <= s["max"]
        assert s["min"] > 0
    out = tmp_path / "sub" / "bench.json"
    write_report(out, report)
    assert json.loads(out.read_text()) == report
    console = Console(record=True, width=200)
    console.print(render_table(report))
    text = console.export_text()
    print("\n" + text)  # the measured figures (pytest -s)
    for label in ("direct: prompt processing", "direct: generation", "gateway: time to first token",
                  "gateway/direct: TTFT"):
        assert label in text
    assert f"{report['summary']['direct.pp_tps']['median']:.1f}" in text
    assert "smollm2 on no GPU seen" in text


def test_keys_never_leave(measured):
    report = build_report(measured["raw"], params=public_params(measured["params"]), target={})
    console = Console(record=True, width=200)
    console.print(render_table(report))
    for text in (measured["stdout"], json.dumps(report), console.export_text(), json.dumps(measured["params"])):
        assert LLAMA_KEY not in text and GATEWAY_KEY not in text
    # the unit's literal --api-key was masked, the key file path kept
    assert report["server"]["flags"][-2:] == ["--api-key", MASK]


def test_wrong_keys_fail_clearly(stack, tmp_path):
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-right-key-123\n")
    one = BenchOptions(prompt_tokens=0, gen_tokens=2, runs=1, warmup=0, tools=False, timeout=120)
    with pytest.raises(ProvisionError, match="HTTP 401") as exc:
        run_in_ct(LocalShell(), params(stack, opts=one, llama_key_file=str(wrong)))
    assert "not-the-right-key" not in str(exc.value)
    # the gateway honours its own key: direct passes, the gateway path is refused
    with pytest.raises(ProvisionError, match="v1/messages answered HTTP 401"):
        run_in_ct(LocalShell(), params(stack, opts=one, gateway_key_file=str(wrong)))


def test_falls_back_to_system_python_and_needs_only_the_stdlib(stack):
    tree = ast.parse(Path(measure.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    one = BenchOptions(prompt_tokens=0, gen_tokens=2, runs=1, warmup=0, tools=False, timeout=120)
    p = params(stack, opts=one, gateway_url=None, gateway_key_file=None)
    shell = LocalShell()
    result = shell.run(script(p, python="/nonexistent/venv/bin/python"), timeout=300)
    assert result.ok, result.stdout + result.stderr
    raw = json.loads(result.stdout.splitlines()[-1][len("result "):])
    assert raw["runs"][0]["direct"]["output_tokens"] == 2 and "gateway" not in raw["runs"][0]


@pytest.mark.parametrize("tokens", [4000, 8000])
def test_prompt_size_matches_the_tokenizer(stack, tokens):
    """The requested size is close to what a real BPE tokenizer (llama-server /tokenize) counts."""
    p = coding_prompt(tokens)

    def count(text: str) -> int:
        req = urllib.request.Request(stack.llama_url + "/tokenize", data=json.dumps({"content": text}).encode(),
                                     headers={"content-type": "application/json",
                                              "authorization": f"Bearer {LLAMA_KEY}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return len(json.load(resp)["tokens"])

    total = count(p["system"]) + count(json.dumps(p["tools"])) + count(p["user"])
    assert total == pytest.approx(tokens, rel=0.1)
