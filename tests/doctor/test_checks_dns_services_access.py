"""DNS, services and access checks on recorded facts."""

from __future__ import annotations

import json

from provisioner.doctor import checks_access as ca
from provisioner.doctor import checks_dns as cn
from provisioner.doctor import checks_services as cs
from provisioner.doctor.context import Access, Probe
from provisioner.doctor.fixes import plan_fixes
from provisioner.errors import HostKeyError, ProxmoxError, SSHError

from .recorded_ctx import VMID, config, context, one, raw

UP = ("unit llama-server active enabled\nunit provision-gateway active enabled\nsystemd 252\nhave-curl\n"
      "ip 10.0.3.184\nhealth llama 200\nhealth gateway 200\n")
PROPS = {"default_generation_settings": {"n_ctx": 32768}, "total_slots": 1}
MESSAGE = json.dumps({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "OK"}],
                      "stop_reason": "end_turn"})


def server_raw(props=PROPS, listeners="listen 127.0.0.1:8080 users:((\"llama-server\",pid=812,fd=3))\n"):
    lines = [ln for ln in raw("doctor.server").splitlines() if not ln.startswith(("props", "listen"))]
    lines += [f"props_status {200 if props else 0}", f"props {json.dumps(props) if props else ''}"]
    return "\n".join(lines) + "\n" + listeners


def probes(health=200, e2e=200, body=MESSAGE):
    base = "http://10.0.3.184:4000"
    return {"gateway.health": Probe("gateway.health", f"{base}/health", status=health, body="{}"),
            "gateway.e2e": Probe("gateway.e2e", f"{base}/v1/messages", status=e2e, body=body, seconds=0.4)}


SHA = "ab" * 32
#: the recorded model file with the sidecar `provision up` writes after verifying it
MODEL_CT = (raw("model.ct") + '\nsidecar model {"size": 98362432, "mtime": 1795316378, "sha256": "' + SHA
            + '", "verified": "sha256", "source": {}}')


def up_ctx(**kw):
    raw_map = {"services.ct": UP, "doctor.server": server_raw(), "model.ct": MODEL_CT, **kw.pop("raw", {})}
    return context(raw=raw_map, probes=kw.pop("probes", probes()), **kw)


# -- DNS ------------------------------------------------------------------------------------------

def test_dns_healthy():
    d = context()
    assert [(f.id, f.status) for c in cn.CHECKS for f in c(d)] == [
        ("dns.immutable", "ok"), ("dns.pve_ignore", "ok"), ("dns.resolve", "ok")]


def test_immutable_but_ignored_resolv_conf_is_harmless():
    d = context(raw={"resolv.ct": "exists\nattrs ----i---------e-------\nignored\n"})
    f = one(cn.check_resolv(d), "dns.immutable")
    assert f.status == "ok" and "harmless" in f.title


def test_immutable_resolv_conf_is_fixable_from_the_host():
    d = context(raw={"resolv.ct": "exists\nattrs ----i---------e-------\npve-managed\n"})
    f = one(cn.check_resolv(d), "dns.immutable")
    # the start task only says "startup for container 'N' failed" (pve-container src/PVE/LXC.pm:3121@94f5585)
    assert f.status == "fail" and f.fixable and "startup for container '764' failed" in f.detail
    assert f"chattr -i /var/lib/lxc/{VMID}/rootfs/etc/resolv.conf" in f.detail
    fixes = plan_fixes(d, [f])
    assert [x.summary for x in fixes] == ["resolv: remove the immutable flag from /etc/resolv.conf "
                                         "(it would stop the next start)"]


def test_custom_resolv_without_marker():
    fs = cn.check_resolv(context(raw={"resolv.ct": "exists\nattrs --------------e-------\n"}))
    f = one(fs, "dns.pve_ignore")
    assert f.status == "warn" and f"pct exec {VMID} -- touch /etc/.pve-ignore.resolv.conf" in f.fix


def test_custom_resolv_with_marker_is_fine():
    fs = cn.check_resolv(context(raw={"resolv.ct": "exists\nattrs --------------e-------\nignored\n"}))
    assert one(fs, "dns.pve_ignore").status == "ok"


def test_lsattr_failed():
    f = one(cn.check_resolv(context(raw={"resolv.ct": "exists\nlsattr-failed\n"})), "dns.immutable")
    assert f.status == "warn"


def test_names_fail_in_the_container_only():
    d = context(raw={"doctor.ct_dns": "ns 10.0.3.1\nresolve deb.debian.org fail\n"})
    f = one(cn.check_resolution(d), "dns.resolve")
    assert f.status == "fail" and "the host resolves them" in f.title and "container.nameserver" in f.fix


def test_names_fail_everywhere_is_a_network_warning():
    d = context(raw={"doctor.ct_dns": "ns 10.0.3.1\nresolve deb.debian.org fail\n",
                     "doctor.host_dns": "ns 1.1.1.1\nresolve deb.debian.org fail\n"})
    f = one(cn.check_resolution(d), "dns.resolve")
    assert f.status == "warn" and "neither in the container nor on the host" in f.title


def test_no_nameserver():
    f = one(cn.check_resolution(context(raw={"doctor.ct_dns": "resolve deb.debian.org fail\n"})), "dns.resolve")
    assert f.status == "fail" and "no nameserver" in f.title


# -- services -------------------------------------------------------------------------------------

def test_services_healthy():
    d = up_ctx()
    got = {f.id: f.status for c in cs.CHECKS for f in c(d)}
    assert got == {k: "ok" for k in ("services.llama_unit", "services.gateway_unit", "services.llama_health",
                                     "services.model_file", "services.context", "services.vram", "services.ports",
                                     "services.gateway_health", "services.e2e", "services.model_verified")}, got
    ctx = one(cs.check_context(d), "services.context")
    assert "llama-server /props" in ctx.evidence.output


def test_failed_unit_is_restarted_by_fix():
    d = up_ctx(raw={"services.ct": UP.replace("llama-server active", "llama-server failed")})
    f = one(cs.check_units(d), "services.llama_unit")
    assert f.status == "fail" and f.fixable and "journalctl -u llama-server" in f.fix
    assert [x.summary for x in plan_fixes(d, [f])] == [f"restart llama-server.service in CT {VMID}"]


def test_stopped_unit():
    d = up_ctx(raw={"services.ct": UP.replace("provision-gateway active", "provision-gateway inactive")})
    f = one(cs.check_units(d), "services.gateway_unit")
    assert f.status == "fail" and f.fixable and "inactive" in f.title


def test_unit_not_installed():
    f = one(cs.check_units(context()), "services.llama_unit")
    assert f.status == "fail" and not f.fixable and "not installed" in f.title


def test_health_loading_and_down():
    d = up_ctx(raw={"services.ct": UP.replace("health llama 200", "health llama 503")})
    assert one(cs.check_llama_health(d), "services.llama_health").status == "warn"
    d = up_ctx(raw={"services.ct": UP.replace("health llama 200", "health llama 000")})
    assert one(cs.check_llama_health(d), "services.llama_health").status == "fail"


def test_model_missing_and_unreadable():
    d = up_ctx(raw={"model.ct": "dir 1\navail 100\n"})
    f = one(cs.check_model_file(d), "services.model_file")
    assert f.status == "fail" and "missing" in f.title
    d = up_ctx(raw={"doctor.server": server_raw().replace("readable model", "unreadable model")})
    f = one(cs.check_model_file(d), "services.model_file")
    assert f.status == "fail" and "llama cannot read" in f.title and "chmod a+r" in f.fix


def test_context_from_props_too_small():
    d = up_ctx(raw={"doctor.server": server_raw(props={"default_generation_settings": {"n_ctx": 8192}})})
    f = one(cs.check_context(d), "services.context")
    assert f.status == "fail" and "8192" in f.title and "Prompt is too long" in f.detail


def test_context_capped_by_training_context_without_props():
    d = context(cfg=config(server={"ctx_size": 32768, "override_kv": []}))
    f = one(cs.check_context(d), "services.context")
    assert f.status == "fail" and "is 8192" in f.title
    assert "server.override_kv: ['llama.context_length=int:32768']" in f.fix


def test_context_shared_by_slots():
    d = context(cfg=config(server={"ctx_size": 32768, "parallel": 2,
                                   "override_kv": ["llama.context_length=int:32768"]}))
    f = one(cs.check_context(d), "services.context")
    assert f.status == "fail" and "16384" in f.title and "set server.ctx_size: 65536" in f.fix


def test_context_not_checked_without_claude_code():
    assert cs.check_context(context(cfg=config(clients={"claude_code": False}))) == []


def test_vram_estimate_from_the_gguf_header():
    d = context()
    model_b, kv_b, n_ctx = cs.estimate(d)
    # SmolLM2-135M: 30 layers, 3 KV heads × 64 = 192 per token for k and for v; q8_0 = 34/32 bytes;
    # the pool is ctx_size + server.background_slot (32768 + 4096) tokens
    assert (model_b, n_ctx) == (98362432, 36864)
    assert kv_b == 30 * 36864 * (192 * 34 / 32) * 2
    f = one(cs.check_vram(d), "services.vram")
    assert f.status == "ok" and "fits in 24563 MiB" in f.title


def test_vram_too_small():
    d = context(raw={"doctor.vram": "0, 512, 200, 312\n"})
    f = one(cs.check_vram(d), "services.vram")
    assert f.status == "warn" and "> 312 MiB" in f.title and "ctx_size" in f.fix


def test_vram_counts_our_own_use_when_running():
    d = up_ctx(cfg=config(server={"background_slot": 0}), raw={"doctor.vram": "0, 512, 480, 32\n"})
    assert one(cs.check_vram(d), "services.vram").title.endswith("fits in 512 MiB of VRAM")


def test_port_conflict():
    other = "listen 0.0.0.0:8080 users:((\"python3\",pid=77,fd=3))\n"
    f = one(cs.check_ports(up_ctx(raw={"doctor.server": server_raw(listeners=other)})), "services.ports")
    assert f.status == "fail" and 'port 8080 (server) is held by users:(("python3"' in f.title


def test_gateway_unreachable_from_here_but_up_inside():
    bad = probes()
    bad["gateway.health"] = Probe("gateway.health", "http://10.0.3.184:4000/health", error="timed out")
    bad["gateway.e2e"] = Probe("gateway.e2e", "http://10.0.3.184:4000/v1/messages", error="timed out")
    fs = cs.check_gateway(up_ctx(probes=bad))
    f = one(fs, "services.gateway_health")
    assert f.status == "fail" and "answers inside the container but not at" in f.title and "0.0.0.0" in f.fix
    assert one(fs, "services.e2e").status == "fail"


def test_e2e_unauthorised():
    body = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
    f = one(cs.check_gateway(up_ctx(probes=probes(e2e=401, body=body))), "services.e2e")
    assert f.status == "fail" and "gateway.api_key" in f.fix and "401" in f.evidence.output


# -- access ---------------------------------------------------------------------------------------

def _access(**kw) -> Access:
    base = dict(auth_kind="token", auth_user="root@pam!provision", root_path="ssh", api_checked=True,
                ssh_checked=True, pve_release="9.1.2")
    return Access(**{**base, **kw})


def test_access_api_rejected():
    err = ProxmoxError("401 authentication failure", status=401)
    f = one(ca.check_api(context(access=_access(api_error=err))), "access.api")
    assert f.status == "fail" and "401 authentication failure" in f.title and "API Tokens" in f.fix


def test_root_path_token_with_ssh_and_pct():
    f = one(ca.check_root_path(context()), "access.root_path")
    assert f.status == "ok" and "pct set" in f.title


def test_root_path_token_without_ssh():
    d = context(access=_access(ssh_error=SSHError("cannot connect to pve.example:22 over SSH: refused")))
    f = one(ca.check_root_path(d), "access.root_path")
    assert f.status == "fail" and "root@pam" in f.fix and "ssh root@HOST pct list" in f.fix


def test_root_path_password():
    d = context(access=_access(auth_kind="password", auth_user="root@pam", root_path="api"))
    assert one(ca.check_root_path(d), "access.root_path").status == "ok"
    d = context(access=_access(auth_kind="password", auth_user="root@pam", root_path="api",
                               api_error=ProxmoxError("401 no ticket")))
    assert one(ca.check_root_path(d), "access.root_path").status == "fail"


def test_unknown_host_key():
    err = HostKeyError("the SSH host key of pve.example is not known (ssh-ed25519 SHA256:abc)",
                       fix="check the fingerprint ... then add it: ssh-keyscan -p 22 pve.example >> ~/.ssh/known_hosts")
    f = one(ca.check_ssh(context(access=_access(ssh_error=err))), "access.ssh")
    assert f.status == "fail" and "not known" in f.title and "ssh-keyscan" in f.fix


def _with_perms(perms):
    from provisioner.engine.preflight import MINIMAL_PRIVILEGES  # noqa: F401
    return Access(auth_kind="token", auth_user="provision@pve!provision", root_path="ssh", api_checked=True,
                  ssh_checked=True, pve_release="9.1.3", permissions=perms)


def test_privileges_agree_with_up_s_preflight():
    from provisioner.engine.preflight import MINIMAL_PRIVILEGES
    full = {"/": {p: 1 for p in MINIMAL_PRIVILEGES}}
    f = one(ca.check_privileges(context(access=_with_perms(full))), "access.privileges")
    assert f.status == "ok"
    less = {"/": {p: 1 for p in MINIMAL_PRIVILEGES if p != "VM.Snapshot"}}
    f = one(ca.check_privileges(context(access=_with_perms(less))), "access.privileges")
    assert f.status == "fail" and f"VM.Snapshot on /vms/{VMID}" in f.title
    assert "pveum role modify Provision --append 1 --privs VM.Snapshot" in f.fix
    # not read (root@pam): no finding
    assert ca.check_privileges(context()) == []


def test_model_changed_in_place_is_seen_by_size_mtime_and_by_deep_hash():
    """Issue 20 point 5: a model changed in place was not seen by doctor."""
    f = one(cs.check_model_file(up_ctx(raw={"model.ct": MODEL_CT.replace("file model 98362432 1795316378",
                                                                         "file model 98362432 1795316999")})),
            "services.model_verified")
    assert f.status == "fail" and "changed since it was verified" in f.title and "provision up" in f.fix
    # same size and mtime: only --deep can tell (the hash fact), and says what it cost
    same = one(cs.check_model_file(up_ctx()), "services.model_verified")
    assert same.status == "ok" and "doctor --deep" in same.title
    deep = up_ctx(raw={"doctor.model_sha": f"sha model {'cd' * 32} 98362432 0.4\n"})
    f = one(cs.check_model_file(deep), "services.model_verified")
    assert f.status == "fail" and "is not the file that was verified" in f.title and "read in 0.4 s" in f.evidence.output
    good = up_ctx(raw={"doctor.model_sha": f"sha model {SHA} 98362432 0.4\n"})
    assert one(cs.check_model_file(good), "services.model_verified").title == \
        "model file sha256 verified (0.1 GiB read in 0.4 s)"


def test_a_template_without_tools_is_a_warning():
    """Issue 20 point 11: tool calls come back as text with such a template."""
    caps = {"supports_tools": False, "supports_tool_calls": False}
    f = one(cs.check_tools(up_ctx(raw={"doctor.server": server_raw(props={
        "default_generation_settings": {"n_ctx": 32768}, "chat_template_caps": caps})})), "services.tools")
    assert f.status == "warn" and "no tool support" in f.title and "--chat-template-file" in f.fix
    good = {"default_generation_settings": {"n_ctx": 32768}, "chat_template_caps": {"supports_tools": True}}
    assert one(cs.check_tools(up_ctx(raw={"doctor.server": server_raw(props=good)})), "services.tools").status == "ok"
