"""What the CLI shows (issue 20, point 16): texts as written, a lock wait as one line, a result after verify."""

from __future__ import annotations

import io

from rich.console import Console

from provisioner.cli.output import Output
from provisioner.engine.plan import Change
from provisioner.errors import ConfigError


def capture(terminal: bool) -> tuple[Output, io.StringIO]:
    out = Output()
    buf = io.StringIO()
    out.err = Console(file=buf, force_terminal=terminal, width=300, highlight=False, soft_wrap=True,
                      color_system=None)
    return out, buf


def test_brackets_in_messages_are_printed_not_taken_as_markup() -> None:
    """The hostname pattern `[a-zA-Z0-9]...` printed as `^((*)?)(\\.(*)?)*$`."""
    out, buf = capture(False)
    out.error(ConfigError("x does not match ^[a-z0-9]([a-z0-9-]*)$ in [/dev/nvidia0]", file="h.yaml", line=3),
              kind="config")
    out.warn("a [bold]note[/bold]")
    assert "^[a-z0-9]([a-z0-9-]*)$ in [/dev/nvidia0]" in buf.getvalue()
    assert "a [bold]note[/bold]" in buf.getvalue()


def test_waiting_for_the_lock_is_one_line() -> None:
    """It repeated "waiting for the lock held by ..." every 2 s."""
    out, buf = capture(False)
    wait = out.lock_waiter()
    for left in (30.0, 28.0, 26.0):
        wait("alice@ws pid 7", left)
    wait("", -1.0)
    assert buf.getvalue().splitlines() == ["waiting up to 30 s for the lock held by alice@ws pid 7"]
    out, buf = capture(True)  # on a terminal: the same line, rewritten with the seconds left
    wait = out.lock_waiter()
    for left in (30.0, 28.0):
        wait("alice@ws pid 7", left)
    wait("", -1.0)
    text = buf.getvalue()
    assert text.count("\n") == 1 and text.count("\r\033[K") == 2 and text.endswith("28 s left\n")


def test_an_applied_change_says_what_it_found() -> None:
    """"✓ verify: check the services (not healthy: llama /health 503)" read like a failure."""
    out, buf = capture(False)
    change = Change("verify", "verify", "ct 120", "check the services (not healthy: llama /health 503)",
                    lambda a: None)
    change.result = "services healthy, one token generated in 4.2 s (checked because: llama /health 503)"
    with out.progress() as progress:
        progress.done(change, 4.2)
    assert buf.getvalue().startswith("✓ verify: services healthy, one token generated in 4.2 s")
    assert change.as_dict()["result"].startswith("services healthy")


def test_verify_sets_its_result(monkeypatch) -> None:
    from provisioner.config import load_text
    from provisioner.engine.context import PlanContext
    from provisioner.facts.pve import ContainerState, PveFacts
    from provisioner.facts.services import ServiceFacts
    from provisioner.operations import verify as v

    cfg = load_text("proxmox: {endpoint: 'https://p:8006', node: pve, auth: {token_id: 'root@pam!x', "
                    "token_secret: {env: X}}}\nmodel: {repo: a/b, file: m.gguf}\n", "h.yaml").config
    ctx = PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", vmid=120,
                                            ct=ContainerState(vmid=120, config={}, digest="", status="running")),
                      facts={"services.ct": ServiceFacts(verify_pending=True)}, root_path="ssh")
    (change,) = v.VerifyStep(cfg).plan(ctx)
    monkeypatch.setattr(v, "verify", lambda actx: 3.5)  # the remote check itself has its own tests
    change.apply(None)  # type: ignore[arg-type]
    assert change.done_text == "services healthy, one token generated in 3.5 s (checked because: services were " \
                               "(re)started and not verified yet)"


def test_the_hostname_rule_is_said_in_words() -> None:
    import pytest

    from provisioner.config import load_text

    with pytest.raises(ConfigError) as info:
        load_text("proxmox: {endpoint: 'https://p:8006', node: pve, auth: {token_id: 'root@pam!x', "
                  "token_secret: {env: X}}}\ncontainer: {hostname: bad_name}\n", "h.yaml")
    assert str(info.value).startswith("h.yaml:2: container.hostname: 'bad_name' is not a hostname: letters, digits "
                                      "and '-'")


def test_a_refused_token_says_what_to_check_not_b_quote() -> None:
    """A wrong API token gave `401 ... errors: b''` and no fix."""
    from proxmoxer.core import ResourceException

    from provisioner.connectors.pve import PVE, Credentials, Endpoint

    pve = PVE(Endpoint(host="pve.example", port=8006, node="pve", insecure=True),
              Credentials(token_id="root@pam!provision", token_secret="x"))
    exc = pve._translate(ResourceException(401, "Unauthorized", "authentication failure", errors={"errors": b""}),
                         "GET", "/version")
    text = str(exc)
    assert "b''" not in text and "GET /version: 401 authentication failure" in text
    assert "root@pam!provision was refused" in text and "pveum user token list" in text
