"""After apply: are the services really serving? (/health, the gateway, one generated token)

Planned when the services step (re)started something (it leaves a flag file in the
container until a verification passes) or when the facts show a service that is
not active or not healthy. A converged, healthy system plans nothing.
"""

from __future__ import annotations

import time

from ..config.schema import HostFile
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import RemoteError
from ..facts.services import (
    GATEWAY_KEY,
    GATEWAY_UNIT,
    LLAMA_UNIT,
    SERVER_KEY,
    VERIFY_FLAG,
    ServiceFacts,
)
from .scripts import render
from .service_step import ModelServiceStep
from .units import local_host

STEP = "verify"


def verify_script(cfg: HostFile) -> str:
    assert cfg.model is not None
    llama = f"http://{local_host(cfg.server.host)}:{cfg.server.port}"
    gw = f"http://{local_host(cfg.gateway.host)}:{cfg.gateway.port}"
    gateway = cfg.gateway.enabled
    return render("scripts/verify.sh.j2", llama_unit=LLAMA_UNIT, gateway_unit=GATEWAY_UNIT, llama_url=llama,
                  gateway_url=gw, gateway=gateway, timeout=int(cfg.server.health_timeout),
                  key_file=GATEWAY_KEY if gateway else SERVER_KEY, server_key_file=SERVER_KEY,
                  model_ids=[m.model_id for m in cfg.models],
                  messages_url=gw if gateway else llama, verify_flag=VERIFY_FLAG)


def why_verify(cfg: HostFile, sf: ServiceFacts | None) -> str | None:
    """Why the services must be checked now, or None when the facts show them healthy."""
    if sf is None:
        return "the container's services are not known yet"
    if sf.verify_pending:
        return "services were (re)started and not verified yet"
    if not sf.healthy(cfg.gateway.enabled):
        bad = [f"{name} /health {code or 'no answer'}" for name, code in sorted(sf.health.items()) if code != 200]
        return "not healthy: " + (", ".join(bad) or "a unit is not active")
    return None


class VerifyStep(ModelServiceStep):
    name = STEP

    def plan_model(self, ctx: PlanContext) -> list[Change]:
        cfg = ctx.cfg
        reason = why_verify(cfg, ctx.fact("services.ct"))
        if reason is None:
            return []

        def apply(actx: ApplyContext) -> None:
            seconds = verify(actx)
            change.result = f"services healthy, one token generated in {seconds:.1f} s (checked because: {reason})"

        change = Change(STEP, "verify", f"ct {ctx.vmid}", f"check the services ({reason})", apply)
        return [change]


def verify(actx: ApplyContext) -> float:
    """Run the checks in the container; returns the seconds it took. Raises with the journal on failure."""
    t0 = time.monotonic()
    done: list[str] = []
    tools: list[str] = []

    def on_line(line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "tools":
            tools.append(rest.strip())
        elif kind == "progress":
            unit, secs, code = (rest.split() + ["", "", ""])[:3]
            actx.status(f"waiting for {unit}: {secs} s (/health {code})")
        elif kind == "status":
            actx.status(rest)
        elif kind == "done":
            done.append(rest)

    timeout = actx.cfg.server.health_timeout + 400
    result = actx.ct().run(verify_script(actx.cfg), timeout=timeout, on_line=on_line)
    if not result.ok or not done:
        errors = [ln[7:] for ln in result.stderr.splitlines() if ln.startswith("error: ")]
        raise RemoteError(errors[0] if errors else f"verifying the services failed (exit {result.exit_code})",
                          exit_code=result.exit_code, output=result.stderr, vmid=actx.vmid, step=STEP,
                          fix="see the journal above; `provision up` again retries the check")
    seconds = time.monotonic() - t0
    actx.plan.notes.append(f"verified: llama-server healthy and one token generated in {seconds:.1f} s")
    if tools and tools[-1] == "false":
        actx.plan.notes.append(NO_TOOLS)
    return seconds


#: said when llama-server's /props reports a chat template without tool support
NO_TOOLS = ("warning: the model's chat template has no tool support (llama-server /props: "
            "chat_template_caps.supports_tools is false): tool calls come back as plain text, and the gateway "
            "refuses a forced tool_choice; coding agents (Claude Code, pi) need tools: choose a model whose "
            "template supports them, or give llama-server one (server.extra_args: --chat-template-file PATH)")
