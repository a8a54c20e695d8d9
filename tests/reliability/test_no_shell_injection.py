"""No config value can inject into a remote shell command (shlex-level analysis).

Every command line that leaves through ``SSH.run`` is recorded (the observation point,
a subclass of the real connector that records instead of sending) while the real
command builders run with hostile values the schema accepts. Each command must parse
into the same words as with a harmless value, and every word carrying hostile text
must have been emitted single-quoted as one unit (so ``$( )``, backticks, ``;``, quotes
and newlines stay data). ``sh -c``/``bash -c`` arguments are analysed recursively.
The real `up` on the simulated node with hostile values is in test_hostile_sim.py.
"""

from __future__ import annotations

import shlex
from types import SimpleNamespace

from hypothesis import given, settings, strategies as st

from provisioner.config import load_text
from provisioner.connectors.pct import CT
from provisioner.connectors.ssh import SSH, Result, SSHTarget
from provisioner.engine.context import PlanContext
from provisioner.engine.lock import _script as lock_script
from provisioner.facts.pve import PveFacts
from provisioner.operations.container import desired_config, pct_set

SAFE = "SAFEVALUE"
NASTY = ["$(touch /tmp/pwned)", "`touch /tmp/pwned`", ";touch /tmp/pwned", "a'b", 'a"b', "a\\b", "&&", "|",
         "> /tmp/x", "${IFS}", "--", "-rf", " ", "\t", "*", "?", "~", "!", "#", "%", "{a,b}", "..", "a\nb"]


class RecordingSSH(SSH):
    """The real SSH connector, except that commands are recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(SSHTarget(host="pve.invalid"))
        self.commands: list[str] = []

    def run(self, command, *, stdin=None, timeout=None, on_line=None):  # noqa: ANN001 - same signature
        self.commands.append(command)
        return Result(command=command, exit_code=0, stdout="", stderr="")


SPECIAL = set(";|&<>()\n")


def skeleton(cmd: str) -> str:
    """What bash would *act on* in ``cmd``: operators, word breaks, ``$``/backtick expansions.

    Literal text (single-quoted, backslash-escaped, or plain word characters) collapses to
    ``w``. A value that injects anything — a ``;``, a word break, a ``$(...)`` in double
    quotes — changes the skeleton; a value that stays data does not.
    """
    out: list[str] = []
    stack = ["top"]  # top | dq | cmd (inside $( ))

    def emit(tok: str) -> None:
        if tok == "w" and out and out[-1] == "w":
            return
        if tok == " " and out and out[-1] == " ":
            return
        out.append(tok)

    i = 0
    while i < len(cmd):
        c, state = cmd[i], stack[-1]
        nxt = cmd[i + 1] if i + 1 < len(cmd) else ""
        if state == "dq":
            if c == '"':
                stack.pop()
            elif c == "\\" and nxt in '$`"\\\n':
                emit("w")
                i += 1
            elif c == "$" and nxt == "(":
                emit("$(")
                stack.append("cmd")
                i += 1
            elif c in "$`":
                emit(c)
            else:
                emit("w")
        else:  # top level or inside $( ): the same rules, ')' closes a $(
            if c == "'":
                j = cmd.index("'", i + 1)  # raises on an unclosed quote: a broken command
                if j > i + 1:
                    emit("w")
                i = j
            elif c == '"':
                stack.append("dq")
            elif c == "\\":
                emit("w")
                i += 1
            elif c == "$" and nxt == "(":
                emit("$(")
                stack.append("cmd")
                i += 1
            elif c == ")" and state == "cmd":
                emit(")")
                stack.pop()
            elif c in SPECIAL or c in "$`":
                emit(c)
            elif c in " \t":
                emit(" ")
            else:
                emit("w")
        i += 1
    assert stack == ["top"], f"unbalanced quoting in {cmd!r}"
    return "".join(out)


def commands_for(value: str) -> list[str]:
    """Every SSH command line the command builders send for a host file carrying ``value``."""
    path_value = value.replace("\n", "_").replace("/../", "/_/").removesuffix("/..")
    text = f"""
proxmox:
  endpoint: https://pve.lan:8006
  node: pve
  auth: {{token_id: root@pam!p, token_secret: {{env: T}}}}
container:
  vmid: 120
  description: {json(value)}
  mounts: [{{host: {json('/srv/' + path_value)}, path: {json('/mnt/' + path_value)}}}]
gpu: {{enabled: false}}
model: {{path: {json('/models/' + path_value + '.gguf')}, dir: {json('/srv/' + path_value)}}}
"""
    cfg = load_text(text, "h.yaml").config
    ctx = PlanContext(cfg=cfg, pve=PveFacts(version="9.1", release="9.1.3", ct=None, vmid=120), facts={},
                      root_path="ssh")
    want = desired_config(ctx)
    ssh = RecordingSSH()
    actx = SimpleNamespace(ssh=ssh, cfg=cfg, plan=ctx)
    pct_set(actx, 120, {"mp0": want["mp0"], "description": cfg.container.description}, ["mp1"])
    CT(ssh, 120).put(b"data", f"{cfg.model.dir}/{cfg.model.filename}")
    CT(ssh, 120).run("echo script on stdin")
    ssh.put(b"data", f"/var/lib/provision/{path_value}")
    ssh.commands.append(lock_script(f"pve-{value}", f"{value}@host pid 1"))
    return ssh.commands


def json(v: str) -> str:
    import json as _json
    return _json.dumps(v)


hostile = st.one_of(st.sampled_from(NASTY),
                    st.text(alphabet=st.sampled_from(list("$`;'\"\\|&<>(){}[]*?~!# \t\nab/-.,=")), min_size=1,
                            max_size=30),
                    st.lists(st.sampled_from(NASTY), min_size=1, max_size=4).map("".join))


@settings(max_examples=600, deadline=None)
@given(hostile)
def test_hostile_values_stay_single_words(value):
    value = value.replace("\x00", "")
    safe_cmds = commands_for(SAFE)
    try:
        cmds = commands_for(value)
    except Exception as exc:  # the schema refusing a value is fine: it never reaches a shell
        from provisioner.errors import ConfigError
        assert isinstance(exc, ConfigError), exc
        return
    assert len(cmds) == len(safe_cmds)
    for cmd, safe in zip(cmds, safe_cmds):
        assert skeleton(cmd) == skeleton(safe), (value, cmd, safe)


def test_description_with_command_substitution_is_one_quoted_word():
    cmds = commands_for("$(touch /tmp/pwned) `id`; rm -rf /")
    (pct,) = [c for c in cmds if c.startswith("pct set")]
    toks = shlex.split(pct)
    assert toks[toks.index("--description") + 1] == "$(touch /tmp/pwned) `id`; rm -rf /"
    assert "'$(touch /tmp/pwned) `id`; rm -rf /'" in pct


def test_the_analysis_catches_injections():
    """The checker itself: careless quoting of a hostile value changes the skeleton."""
    def careless(v: str) -> str:
        return f"pct set 120 --description {v}"

    def double_quoted(v: str) -> str:
        return f'pct set 120 --description "{v}"'

    def quoted(v: str) -> str:
        return f"pct set 120 --description {shlex.quote(v)}"

    for bad in ("a;b", "$(touch /tmp/pwned)", "a b", "`id`", "a\nb", "x|y"):
        assert skeleton(careless(bad)) != skeleton(careless(SAFE))
        assert skeleton(quoted(bad)) == skeleton(quoted(SAFE))
    for bad in ("$(id)", "`id`", "${HOME}"):
        assert skeleton(double_quoted(bad)) != skeleton(double_quoted(SAFE))


def test_a_mount_path_cannot_inject_into_the_pve_property_string():
    """`/srv/a,mp=/etc` would turn one mount into another: the schema refuses a ',' in mount paths."""
    import pytest

    from provisioner.errors import ConfigError

    base = ("proxmox:\n  endpoint: https://pve.lan:8006\n  node: pve\n"
            "  auth: {token_id: root@pam!p, token_secret: {env: T}}\n")
    with pytest.raises(ConfigError) as err:
        load_text(base + "container:\n  mounts: [{host: '/srv/a,mp=/etc', path: /mnt/a}]\n", "h.yaml")
    assert "container.mounts[0].host" in str(err.value) and "','" in str(err.value)
