"""The benchmark report: raw runs in, a JSON document and a table out.

The JSON (``schema: provision-bench/1``) keeps every run (warm-up apart), the
summary of each metric (median and spread, see ``stats.py``), what was measured
(host, container, model, GPU, llama.cpp build, llama-server flags) and how
(prompt size, generation length, runs). Secrets never enter it: the measurement
reads keys from files and never returns them, flags like ``--api-key`` are
masked, and the whole document goes through ``redact_obj`` once more.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from typing import Any

from ..redact import MASK, redact_obj
from .stats import summarize

SCHEMA = "provision-bench/1"

# (summary key, where in a run, label, unit)
METRICS: list[tuple[str, tuple[str, ...], str, str]] = [
    ("direct.pp_tps", ("direct", "pp_tps"), "direct: prompt processing", "tok/s"),
    ("direct.tg_tps", ("direct", "tg_tps"), "direct: generation", "tok/s"),
    ("direct.ttft_s", ("direct", "ttft_s"), "direct: time to first token", "s"),
    ("direct.prompt_tokens", ("direct", "prompt_n"), "direct: prompt tokens processed", "tok"),
    ("direct.output_tokens", ("direct", "output_tokens"), "direct: tokens generated", "tok"),
    ("gateway.pp_tps", ("gateway", "pp_tps"), "gateway: prompt tokens / TTFT", "tok/s"),
    ("gateway.tg_tps", ("gateway", "tg_tps_client"), "gateway: generation", "tok/s"),
    ("gateway.ttft_s", ("gateway", "ttft_s"), "gateway: time to first token", "s"),
    ("gateway.prompt_tokens", ("gateway", "prompt_tokens"), "gateway: prompt tokens", "tok"),
    ("gateway.output_tokens", ("gateway", "output_tokens"), "gateway: tokens generated", "tok"),
    ("overhead.ttft_ratio", ("overhead", "ttft_ratio"), "gateway/direct: TTFT", "x"),
    ("overhead.ttft_added_s", ("overhead", "ttft_added_s"), "gateway: TTFT added", "s"),
    ("overhead.tg_ratio", ("overhead", "tg_ratio"), "gateway/direct: generation speed", "x"),
    ("overhead.wall_ratio", ("overhead", "wall_ratio"), "gateway/direct: whole request", "x"),
    # the direct path's generation speed seen from the client, to compare with the gateway's
    ("direct.tg_tps_client", ("direct", "tg_tps_client"), "direct: generation (client clock)", "tok/s"),
]

SECRET_FLAGS = {"--api-key", "--hf-token", "-hft"}


def _get(run: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def server_flags(command: str | None) -> list[str]:
    """llama-server's argv from the unit's ExecStart, values of secret flags masked."""
    if not command:
        return []
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = command.split()
    out: list[str] = []
    mask_next = False
    for word in argv:
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        flag, eq, _ = word.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(word)
                mask_next = True
            continue
        out.append(word)
    return out


def build_report(raw: dict[str, Any], *, params: dict[str, Any], target: dict[str, Any],
                 date: datetime | None = None) -> dict[str, Any]:
    """The JSON document from the measurement's raw result."""
    env = raw.get("environment") or {}
    runs = [r for r in raw.get("runs") or [] if not r.get("warmup")]
    warmup = [r for r in raw.get("runs") or [] if r.get("warmup")]
    summary = {}
    for key, path, _label, _unit in METRICS:
        values = [_get(r, path) for r in runs]
        if all(v is None for v in values):
            continue
        summary[key] = summarize(values)
    report = {
        "schema": SCHEMA,
        "date": (date or datetime.now(UTC)).isoformat(timespec="seconds"),
        "target": target,
        "model": {"id": params.get("model_id"), "path": env.get("model_path"), "ftype": env.get("model_ftype"),
                  "params": env.get("model_params"), "size_bytes": env.get("model_size_bytes")},
        "gpus": env.get("gpus") or [],
        "llama_cpp": {"build_info": env.get("llama_build_info"), "build": env.get("llama_build")},
        "server": {"n_ctx": env.get("n_ctx"), "slots": env.get("total_slots"),
                   "flags": server_flags(env.get("server_command"))},
        "params": params,
        "summary": summary,
        "runs": runs,
        "warmup": warmup,
    }
    return redact_obj(report)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "tok":
        return f"{value:.0f}"
    return f"{value:.1f}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, unit, median, min..max, p10..p90, stdev) per summarized metric, in METRICS order."""
    rows = []
    for key, _path, label, unit in METRICS:
        s = report["summary"].get(key)
        if s is None or s["n"] == 0:
            continue
        rows.append((label, unit, _fmt(s["median"], unit), f"{_fmt(s['min'], unit)} .. {_fmt(s['max'], unit)}",
                     f"{_fmt(s['p10'], unit)} .. {_fmt(s['p90'], unit)}", _fmt(s["stdev"], unit)))
    return rows


def title(report: dict[str, Any]) -> str:
    gpus = ", ".join(g["name"] for g in report["gpus"]) or "no GPU seen"
    p = report["params"]
    t = report["target"]
    where = f"{t.get('node')}/{t.get('hostname')} (CT {t.get('vmid')})" if t.get("vmid") else t.get("hostname") or "?"
    return (f"{report['model']['id']} on {gpus} — {where}, llama.cpp {report['llama_cpp']['build_info'] or '?'}; "
            f"prompt ~{p['prompt_tokens']} tok, {p['gen_tokens']} generated, {p['runs']} runs")


def render_table(report: dict[str, Any]):
    """A rich Table of the summary."""
    from rich.table import Table

    table = Table(title=title(report), title_justify="left")
    for name, justify in (("metric", "left"), ("unit", "left"), ("median", "right"), ("min .. max", "right"),
                          ("p10 .. p90", "right"), ("stdev", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in table_rows(report):
        table.add_row(*row)
    return table
