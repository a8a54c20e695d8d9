"""Hostile and broken host files: the loader answers with a ConfigError naming the file,
the line and the key — never a traceback (hypothesis; the examples count is in the report)."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from provisioner.config import load_text
from provisioner.errors import ConfigError, ConfigErrors

FILE = "hostile/host.yaml"

VALID: dict[str, Any] = {
    "version": 1,
    "proxmox": {"endpoint": "https://pve.example:8006", "node": "pve",
                "auth": {"token_id": "root@pam!prov", "token_secret": {"env": "PVE_TOKEN"}}},
    "ssh": {"key_file": "/root/.ssh/id_ed25519"},
    "container": {"vmid": 120, "hostname": "llm", "tags": ["a"], "description": "x",
                  "mounts": [{"host": "/srv/a", "path": "/mnt/a"}]},
    "model": {"repo": "org/name", "file": "m.gguf", "token": {"env": "HF_TOKEN"}},
    "server": {"port": 8080, "extra_args": ["--jinja"]},
    "gateway": {"api_key": {"file": "/etc/provision/key"}, "model_aliases": {"a": "b"}},
    "llama_cpp": {"source": {"git": "https://github.com/ggml-org/llama.cpp", "ref": "b1"}},
}

SHELL_NASTY = ["$(touch /tmp/pwned)", "`id`", "a;rm -rf /", "x\ny", "../../etc/passwd", "a'b\"c", "\\",
               "${IFS}", "&&", "|", ">", "\x00", "\r", "-rf", "--help", "%s%n", "{{ 7*7 }}", "🙂", " ",
               "", "a" * 5000, "\t", "*", "~root", "!!python/object:os.system", "&a", "*a"]


def paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += paths(v, prefix + (i,))
    return out


ALL_PATHS = [p for p in paths(VALID) if p]

scalars = st.one_of(st.sampled_from(SHELL_NASTY), st.text(max_size=40), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(SHELL_NASTY)),
                                                 inner, max_size=4)), max_leaves=12)


def set_path(d: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def check(text: str) -> None:
    try:
        load_text(text, FILE)
    except ConfigErrors as errs:
        assert errs.errors
        for e in errs.errors:
            assert e.file == FILE and e.line is not None and e.key, str(e)
    except ConfigError as e:
        assert e.file == FILE, str(e)
        assert e.line is not None or e.message == "the file is empty", str(e)
        assert str(e).startswith(FILE), str(e)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), values), min_size=1, max_size=4))
def test_mutated_host_files(mutations):
    data = copy.deepcopy(VALID)
    for path, value in mutations:
        try:
            set_path(data, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced a parent
    check(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    check(text)


YAML_BITS = ["proxmox:", "  endpoint: https://x:8006", "  node: pve", "  auth:", "    token_id: a@b!c",
             "    token_secret: {env: X}", "container:", "  hostname: $(id)", "  tags: [a, b]", "- a", "? x",
             "&anchor {a: 1}", "*anchor", "!!python/object/apply:os.system ['id']", "!!binary aGk=",
             "!!set {a, b}", "!!timestamp 2001-12-14", "[[[[[[[[", "{a: {b: {c: [", "key: |", "  block",
             "%YAML 1.1", "---", "...", "\t tab: 1", "a: b: c", "'unterminated", "x: !!int abc",
             "<<: *anchor", "? [a, b]\n: c", "1: 2", "null: 1", "true: 1", "container: &c {hostname: a}",
             "ssh: *c", "\ufeffbom: 1", "\x07bell: 1", "container: {vmid: 0x7f}", "container: {vmid: 1e3}"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(YAML_BITS), min_size=1, max_size=12))
def test_yaml_fragments(lines):
    check("\n".join(lines) + "\n")


def test_recursive_alias_is_an_error_not_a_crash():
    check("a: &x [*x]\n")
    check("proxmox: &p {endpoint: https://x, node: n, auth: *p}\n")


def test_valid_base_loads():
    assert load_text(yaml.safe_dump(VALID), FILE).config.container.hostname == "llm"
