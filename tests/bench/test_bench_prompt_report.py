"""The coding-agent prompt, the flag masking and the report's shape on hand-made runs."""

from __future__ import annotations

import json

import pytest

from provisioner.bench.prompt import (
    CODE_CHARS_PER_TOKEN,
    SYSTEM,
    TOOLS,
    coding_prompt,
    overhead_tokens,
)
from provisioner.bench.report import (
    METRICS,
    SCHEMA,
    build_report,
    server_flags,
    table_rows,
)
from provisioner.bench.runner import (
    BenchOptions,
    params_for,
    parse_output,
    public_params,
)
from provisioner.errors import ProvisionError
from provisioner.redact import MASK


def test_prompt_is_a_coding_agent_turn_of_the_requested_size():
    small, big = coding_prompt(3000), coding_prompt(9000)
    assert small["system"] == SYSTEM and [t["name"] for t in small["tools"]] == [t["name"] for t in TOOLS]
    assert "Read" in [t["name"] for t in TOOLS] and "Bash" in [t["name"] for t in TOOLS]
    assert "def " in big["user"] and "<file path=" in big["user"] and "max_retries" in big["user"]
    assert big["code_lines"] > small["code_lines"] > 0
    # the code part grows with the request: about (8000 - 2000) tokens more
    grown = (len(big["user"]) - len(small["user"])) / CODE_CHARS_PER_TOKEN
    assert 5500 < grown < 6500
    # below the fixed part there is no code, only the task
    assert coding_prompt(overhead_tokens() - 1)["code_lines"] == 0
    assert coding_prompt(3000, tools=False)["tools"] == []


def test_server_flags_mask_secret_values():
    flags = server_flags("/opt/x/llama-server -m /m.gguf --api-key sk-123456 --hf-token=hf_abcdef "
                         "--api-key-file /etc/provision/llama-server.key")
    assert "sk-123456" not in " ".join(flags) and "hf_abcdef" not in " ".join(flags)
    assert flags[3:6] == ["--api-key", MASK, f"--hf-token={MASK}"]
    assert flags[-2:] == ["--api-key-file", "/etc/provision/llama-server.key"]
    assert server_flags(None) == []


def _run(i, d_pp, d_tg, d_ttft, g_tg, g_ttft, warmup=False):
    return {"run": i, "warmup": warmup, "order": ["direct", "gateway"],
            "direct": {"pp_tps": d_pp, "tg_tps": d_tg, "ttft_s": d_ttft, "tg_tps_client": d_tg, "prompt_n": 900,
                       "output_tokens": 32},
            "gateway": {"pp_tps": 900 / g_ttft, "tg_tps_client": g_tg, "ttft_s": g_ttft, "prompt_tokens": 900,
                        "output_tokens": 32},
            "overhead": {"ttft_ratio": g_ttft / d_ttft, "tg_ratio": g_tg / d_tg, "ttft_added_s": g_ttft - d_ttft}}


def test_report_summarizes_measured_runs_only():
    params = params_for(BenchOptions(prompt_tokens=1000, gen_tokens=32, runs=3), llama_url="http://127.0.0.1:8080",
                        gateway_url="http://127.0.0.1:4000", model_id="m", llama_key_file="/k",
                        gateway_key_file="/g")
    raw = {"environment": {"llama_build_info": "b1-abc", "gpus": [{"name": "NVIDIA RTX 4090"}],
                           "server_command": "llama-server --api-key secret-value-1"},
           "runs": [_run(0, 1.0, 1.0, 99.0, 1.0, 99.0, warmup=True), _run(1, 1000, 50, 1.0, 49, 1.1),
                    _run(2, 1200, 52, 0.9, 50, 1.0), _run(3, 1100, 51, 0.95, 51, 1.05)]}
    report = build_report(raw, params=public_params(params), target={"node": "pve", "vmid": 100})
    assert report["schema"] == SCHEMA and len(report["runs"]) == 3 and len(report["warmup"]) == 1
    assert report["summary"]["direct.pp_tps"]["median"] == 1100 and report["summary"]["direct.pp_tps"]["min"] == 1000
    assert report["summary"]["overhead.ttft_ratio"]["n"] == 3
    assert report["server"]["flags"] == ["llama-server", "--api-key", MASK]
    assert "prompt" not in report["params"] and report["params"]["tools"][0] == "Read"
    json.dumps(report)  # serializable as it is
    labels = [row[0] for row in table_rows(report)]
    assert labels == [m[2] for m in METRICS if m[0] in report["summary"]]


def test_options_are_checked_and_errors_surface():
    with pytest.raises(ProvisionError):
        BenchOptions(runs=0).check()
    with pytest.raises(ProvisionError):
        BenchOptions(gen_tokens=0).check()
    with pytest.raises(ProvisionError, match="llama-server does not answer"):
        parse_output("status run 1/1\nerror llama-server does not answer at http://127.0.0.1:1\n")
    assert parse_output('status x\nresult {"runs": []}\n') == {"runs": []}
