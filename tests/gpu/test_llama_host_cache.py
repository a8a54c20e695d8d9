"""The host build cache at plan level: the key, "from host cache" vs "build", and the fact parsers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from provisioner.backends import template_os
from provisioner.facts.llama import (
    HostBuildCache,
    LlamaBuild,
    parse_host_cache,
    parse_llama,
)
from provisioner.facts.pve import PveFacts
from provisioner.operations import llama_cache
from provisioner.operations.llama import LlamaStep, build_spec
from provisioner.operations.llama_build import from_cache_script

from .planctx import ctx, host_facts

HOST = HostBuildCache(frozenset(), "x86_64", "0123456789abcdef")


def _ctx(tmp_path: Path, *, extra: str = "", cache: HostBuildCache = HOST, ct_os: str | None = "debian 12"):
    tar = tmp_path / "src.tar.gz"
    tar.write_bytes(b"a llama.cpp tree")
    c = ctx({**host_facts(), "host.llama_cache": cache,
             **({"ct.llama": LlamaBuild(os_release=ct_os)} if ct_os else {})},
            extra=f"llama_cpp:\n  backend: cpu\n  source: {{tarball: {tar}}}\n" + extra)
    return c


def test_parsers() -> None:
    out = "entry 0123456789abcdef\nentry fedcba9876543210\nmachine x86_64\ncpu 0011223344556677\n"
    assert parse_host_cache(out, 0) == HostBuildCache(frozenset({"0123456789abcdef", "fedcba9876543210"}),
                                                      "x86_64", "0011223344556677")
    assert parse_llama("current \nbinary 0\nos debian 12\n", 0).os_release == "debian 12"
    assert parse_llama("current \nbinary 0\n", 0).os_release is None


def test_template_os() -> None:
    assert template_os("debian-12-standard") == "debian 12"
    assert template_os("local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst") == "debian 13"
    assert template_os("ubuntu-24.04-standard") == "ubuntu 24.04"
    assert template_os("my-own-template") is None


def test_key_changes_with_build_os_machine_and_cpu(tmp_path: Path) -> None:
    spec = build_spec(_ctx(tmp_path))
    key = llama_cache.cache_key(spec, "debian 12", HOST)
    assert key == llama_cache.cache_key(spec, "debian 12", HOST)
    others = {llama_cache.cache_key(spec, "debian 13", HOST),
              llama_cache.cache_key(spec, "debian 12", HostBuildCache(frozenset(), "aarch64", HOST.cpu_flags)),
              llama_cache.cache_key(spec, "debian 12", HostBuildCache(frozenset(), "x86_64", "ffffffffffffffff")),
              llama_cache.cache_key(build_spec(_ctx(tmp_path, extra="  cmake_flags: [-DX=1]\n")), "debian 12", HOST)}
    assert key not in others and len(others) == 4


def test_plan_says_from_host_cache_or_build(tmp_path: Path) -> None:
    c = _ctx(tmp_path)
    spec = build_spec(c)
    key = llama_cache.cache_key(spec, "debian 12", HOST)
    [build] = LlamaStep().plan(c)
    assert (build.action, build.summary) == ("build", "build llama-server (cpu)")
    c.facts["host.llama_cache"] = HostBuildCache(frozenset({key}), HOST.machine, HOST.cpu_flags)
    [install] = LlamaStep().plan(c)
    assert install.action == "install"
    assert install.summary == f"llama-server {spec.hash} (cpu) from host cache {key}"
    assert install.diff["host_cache"] == (None, key)
    # switched off: always a build in the container
    off = _ctx(tmp_path, extra="  host_cache: false\n", cache=c.facts["host.llama_cache"])
    assert [ch.action for ch in LlamaStep().plan(off)] == ["build"]
    # an unchanged spec: nothing, whatever the cache holds
    c.facts["ct.llama"] = LlamaBuild(spec.stamp(), spec.hash, True, [spec.hash], "debian 12")
    assert LlamaStep().plan(c) == []


def test_new_container_key_from_the_template(tmp_path: Path) -> None:
    c = _ctx(tmp_path, ct_os=None)
    c.pve = PveFacts(version="9.1", release="9.1.3", ct=None, vmid=120)  # not created yet
    key = llama_cache.cache_key(build_spec(c), "debian 12", HOST)
    c.facts["host.llama_cache"] = HostBuildCache(frozenset({key}), HOST.machine, HOST.cpu_flags)
    assert [ch.action for ch in LlamaStep().plan(c)] == ["install"]
    # an existing container that is not running: its OS is unknown, so no key and no claim
    stopped = _ctx(tmp_path, ct_os=None, cache=c.facts["host.llama_cache"])
    assert [ch.action for ch in LlamaStep().plan(stopped)] == ["build"]


def test_from_cache_script_is_valid_bash_and_checks_before_the_flip(tmp_path: Path) -> None:
    spec = build_spec(_ctx(tmp_path))
    script = from_cache_script(spec, key="0123456789abcdef", runtime=["libgomp1", "libssl3"], keep_builds=2)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "for p in libgomp1 libssl3; do" in script
    stamp = json.dumps(spec.stamp(), sort_keys=True)
    assert f'"hash": "{spec.hash}"' in stamp and f'"hash": "{spec.hash}"' in script
    assert script.index("llama-server\" --version") < script.index("=> not found") < script.index("current.tmp")


def test_the_three_cpu_build_tests_share_one_spec() -> None:
    """inventories/sim.yaml (e2e) and host_data()'s default flags (GPU and interruption tests, which pass
    assets.llama_source() with subdir llama.cpp) ask for the same build: one host cache entry for all."""
    import yaml

    from provisioner.sim import assets
    from provisioner.sim.hostfile import VM_SAFE_CPU_FLAGS, host_data

    root = Path(__file__).resolve().parents[2]
    e2e = yaml.safe_load((root / "inventories" / "sim.yaml").read_text())["llama_cpp"]
    conn = {"api": {"host": "h", "port": 1, "token_id": "t", "token_secret_file": "/f", "fingerprint": "f"},
            "ssh": {"host": "h", "port": 2, "key_file": "/k", "known_hosts": "/n"}, "node": "n",
            "network": {"cidr": "10.0.3.0/24", "gateway": "10.0.3.1", "bridge": "b", "nameserver": "10.0.3.1"},
            "cuda_repo_url": "http://x/compute/cuda/repos/debian12/x86_64/"}
    tests = host_data(conn, vmid=643)["llama_cpp"]
    assert e2e["backend"] == tests["backend"] == "cpu"
    assert e2e["cmake_flags"] == tests["cmake_flags"] == VM_SAFE_CPU_FLAGS
    assert Path(e2e["source"]["tarball"]).name == assets.LLAMA_TARBALL
    assert e2e["source"]["subdir"] == "llama.cpp"
    for test in ("gpu/test_gpu_sim.py", "reliability/test_interruptions_sim.py"):
        text = (root / "tests" / test).read_text()
        assert '"tarball": str(assets.llama_source())' in text and '"subdir": "llama.cpp"' in text, test
    # ... and the interruption test keeps its build real
    assert '"host_cache": False' in (root / "tests/reliability/test_interruptions_sim.py").read_text()


class _Transport:
    """Answers the host and container scripts of the cache path with chosen exit codes, recording them."""

    def __init__(self, push: int, checks: int) -> None:
        self.codes = {"push": push, "checks": checks}
        self.seen: list[str] = []

    def run(self, command: str, *, stdin: bytes = b"", **kw):
        from provisioner.connectors.ssh import Result

        script = stdin.decode()
        kind = ("push" if "tar -xf -" in script else "checks" if "from the host's build cache" in script
                else "forget" if script.startswith("rm -f /var/cache/provision/llama-builds/") else "other")
        self.seen.append(kind)
        code = self.codes.get(kind, 0)
        out = json.dumps({"runtime_packages": ["libgomp1", "bad name;"]}) if kind == "push" else ""
        return Result(command, code, out, "")


@pytest.mark.parametrize("push,checks,expect", [
    (0, 0, ["push", "checks"]),                          # installed from the cache, nothing compiled
    (0, 3, ["push", "checks", "forget", "BUILD"]),       # failed its checks: entry removed, then a build
    (4, 0, ["push", "BUILD"]),                           # the entry vanished since the plan: a build
])
def test_install_from_cache_falls_back_to_a_build(tmp_path: Path, monkeypatch, push, checks, expect) -> None:
    from provisioner.engine.context import ApplyContext
    from provisioner.operations import llama

    c = _ctx(tmp_path)
    spec = build_spec(c)
    transport = _Transport(push, checks)
    monkeypatch.setattr(llama, "run_build", lambda actx, s: transport.seen.append("BUILD"))
    monkeypatch.setattr(llama_cache, "store", lambda *a: transport.seen.append("STORE"))
    actx = ApplyContext(cfg=c.cfg, pve=None, ssh=transport, plan=c)
    llama.install_cached(actx, spec, "0123456789abcdef", "debian 12")
    # a build after a bad entry keeps its result for the next container
    assert transport.seen == expect + (["STORE"] if "BUILD" in expect else [])


def test_a_compiler_killed_for_memory_is_named() -> None:
    from provisioner.operations.llama import build_fix

    tail = "c++: fatal error: Killed signal terminated program cc1plus\ncompilation terminated.\n"
    assert "raise container.memory_mb" in build_fix(tail)
    assert build_fix("error: 'LayerSettingEXT' is not a member of 'vk'") is None
