"""Load a host file: YAML with line numbers → validated, immutable ``HostFile``.

Every error names the file, the line, the key, what is wrong and the fix
(pre-commit/cfgv style). Several errors are reported at once.
"""

from __future__ import annotations

import difflib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..backends import refusal, template_os
from ..errors import ConfigError, ConfigErrors
from ..redact import register
from .schema import HOSTNAME_RE, SAFE_NAME_RE, HostFile, Secret

KeyPath = tuple[str | int, ...]
MAX_DEPTH = 32  # host files are ~5 levels deep


@dataclass(frozen=True)
class Loaded:
    """A validated host file plus what the CLI needs to report about it."""

    path: Path
    config: HostFile
    lines: dict[KeyPath, int]
    warnings: tuple[str, ...]


def _construct(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], file: str) -> Any:
    """Turn a composed YAML node into Python data, recording each key's line."""
    lines.setdefault(path, node.start_mark.line + 1)
    if len(path) > MAX_DEPTH:  # also ends an alias that contains itself (`a: &x [*x]`)
        raise ConfigError("nested too deeply (an alias that refers to itself?)", file=file,
                          line=node.start_mark.line + 1, key=_dotted(path[:MAX_DEPTH]) or None,
                          fix="host files are a few levels deep; remove the self-reference")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) \
                else key_node.value
            if not isinstance(key, str):
                raise ConfigError("keys must be strings", file=file, line=key_node.start_mark.line + 1,
                                  key=_dotted(path) or None, fix="quote the key")
            if key == "":  # `? ` or `"": x`: nothing a host file can mean
                raise ConfigError("empty key", file=file, line=key_node.start_mark.line + 1,
                                  key=_dotted(path) or "(top level)", fix="name the key, or remove the line")
            if key in out:
                raise ConfigError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1,
                                  key=_dotted(path + (key,)), fix="remove one of the two entries")
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), lines, file) for i, v in enumerate(node.value)]
    # Scalars: reuse the safe loader's tag resolution (ints, bools, null...).
    if node.tag == "tag:yaml.org,2002:null" and node.value == "":
        return None  # `key:` with nothing after it (serializing it alone gives no document)
    try:
        return yaml.safe_load(yaml.serialize(node))
    except Exception as exc:  # noqa: BLE001 - PyYAML raises anything on odd tags (`!`, `!!int abc`, `!!timestamp x`)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"cannot read this value: {problem}", file=file, line=node.start_mark.line + 1,
                          key=_dotted(path) or None, fix="quote the value, or remove the tag") from None


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(path: KeyPath) -> type[BaseModel] | None:
    """The pydantic model that describes the mapping at ``path`` (for did-you-mean)."""
    model: Any = HostFile
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """First BaseModel inside Optional[...] / list[...] / unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if found is not None:
            return found
    return None


#: what a pattern means, in words, where the regular expression would not help a reader
PATTERN_WORDS = {
    HOSTNAME_RE.pattern: "a hostname: letters, digits and '-' (not at either end of a label), labels separated by "
                         "dots, e.g. llm or llm.lan",
    SAFE_NAME_RE.pattern: "a plain name: letters, digits, '.', '_' and '-', starting with a letter or digit, "
                          "at most 64 characters",
}

_FIXES = {
    "missing": "add the key",
    "string_pattern_mismatch": "use a value of the expected form",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "literal_error": "use one of the allowed values",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "greater_than": "use a larger value",
}


def _error_for(err: dict, file: str, lines: dict[KeyPath, int]) -> ConfigError:
    loc: KeyPath = tuple(p for p in err["loc"] if not (isinstance(p, str) and (
        p.startswith(("function-", "lax-", "json-")) or p in ("int", "str", "list[...]", "literal['all']",
                                                              "literal['auto']", "literal['auto','all']"))))
    # pydantic adds union-branch names to loc; drop anything not a real key of the data.
    real: list[str | int] = []
    for part in loc:
        if (tuple(real) + (part,)) in lines or err["type"] in ("missing", "extra_forbidden"):
            real.append(part)
    loc = tuple(real)
    line = lines.get(loc) or lines.get(loc[:-1]) or lines.get(()) or None
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        known = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else (
            f"remove it; known keys here: {', '.join(known)}" if known else "remove it")
        return ConfigError(f"unknown key {key!r}", file=file, line=line, key=_dotted(loc), fix=fix)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "missing":
        return ConfigError("required key is missing", file=file, line=lines.get(loc[:-1]) or line,
                           key=_dotted(loc), fix=f"add '{loc[-1]}:' under '{_dotted(loc[:-1]) or 'the top level'}'")
    if kind == "string_pattern_mismatch":
        shown = err.get("input")
        pattern = err["ctx"]["pattern"]
        msg = f"{shown!r} is not " + (PATTERN_WORDS.get(pattern) or f"of the expected form ({pattern})")
    elif kind == "literal_error":
        msg = f"{err.get('input')!r} is not allowed: expected {err['ctx']['expected']}"
    # a validator's own fix (config/paths.py PathError) says exactly what to write instead
    fix = getattr((err.get("ctx") or {}).get("error"), "fix", None) or _FIXES.get(kind, "correct the value")
    return ConfigError(msg, file=file, line=line, key=_dotted(loc) or None, fix=fix)


#: cache types ggml_is_quantized() is false for (everything else in Server.cache_type_v is a block type)
UNQUANTIZED_CACHE = ("f16", "bf16", "f32")


def _model_checks(cfg: HostFile, file: str, lines: dict[KeyPath, int], listed: bool) -> list[ConfigError]:
    """The model list: unique aliases and files, one models directory, the slot mapping, the
    32K context floor of every model a Claude Code slot uses, and what router mode can start."""
    from .models import SLOTS, by_alias, claude_code_models, claude_slots, models_max, serving

    def where(i: int, key: str) -> tuple[str, int | None]:
        path: KeyPath = ("models", i, key) if listed else ("model", key)
        line = lines.get(path) or lines.get(path[:-1]) or lines.get(path[:1])
        return _dotted(path), line

    errors: list[ConfigError] = []
    seen: dict[str, int] = {}
    files: dict[str, int] = {}
    for i, m in enumerate(cfg.models):
        if m.model_id in seen:
            key, line = where(i, "alias")
            errors.append(ConfigError(f"alias {m.model_id!r} is already used by models[{seen[m.model_id]}]",
                                      file=file, line=line, key=key, fix="give each model its own alias"))
        seen.setdefault(m.model_id, i)
        for name in [m.filename] + ([m.draft.filename] if m.draft else []):
            other = files.get(name)
            if other is not None and other != i:
                key, line = where(i, "file" if m.file else "path")
                errors.append(ConfigError(f"file name {name} is also used by models[{other}]: both would be the "
                                          "same file in the models directory", file=file, line=line, key=key,
                                          fix="use one entry per file, or rename one of the local files"))
            files.setdefault(name, i)
        first = cfg.models[0]
        for attr in ("location", "host_dir", "dir"):
            if getattr(m, attr) != getattr(first, attr):
                key, line = where(i, attr)
                errors.append(ConfigError(f"{attr} {getattr(m, attr)!r} differs from models[0]'s "
                                          f"{getattr(first, attr)!r}: all models live in one models directory",
                                          file=file, line=line, key=key,
                                          fix=f"give every entry the same {attr} (a YAML anchor helps)"))
    table = by_alias(cfg)
    slots = cfg.clients.claude_code.models
    for slot in SLOTS:
        alias = getattr(slots, slot)
        if alias is not None and alias not in table:
            path: KeyPath = ("clients", "claude_code", "models", slot)
            errors.append(ConfigError(f"{alias!r} is not a model alias here (aliases: {', '.join(table) or 'none'})",
                                      file=file, line=lines.get(path), key=_dotted(path),
                                      fix="name one of the aliases under models:"))
    for m in claude_code_models(cfg):
        i = cfg.models.index(m)
        ctx = serving(cfg, m).ctx_size
        if ctx and ctx < 32768:
            uses = ", ".join(s for s, a in claude_slots(cfg).items() if a == m.model_id)
            own = m.ctx_size is not None
            key, line = where(i, "ctx_size") if own else ("server.ctx_size", lines.get(("server", "ctx_size")))
            errors.append(ConfigError(
                f"context is {ctx} tokens but Claude Code is configured (clients.claude_code) and uses "
                f"{m.model_id} ({uses}): its system prompt alone is ~24K tokens, so it fails at once"
                if listed else
                f"context is {ctx} tokens but Claude Code is configured (clients.claude_code): "
                "its system prompt alone is ~24K tokens, so it fails at once",
                file=file, line=line, key=key,
                fix=f"set {key}: 32768 or more (0 = the model's own), or clients.claude_code: false"))
    preload = [m.model_id for m in cfg.models if m.preload]
    if len(cfg.models) > 1 and len(preload) > models_max(cfg):
        # llama-server refuses to start: tools/server/server-models.cpp:849-853 (b11312)
        errors.append(ConfigError(f"{len(preload)} models have preload: true ({', '.join(preload)}) but only "
                                  f"{models_max(cfg)} may be loaded at once (server.models_max)",
                                  file=file, line=lines.get(("server", "models_max")) or lines.get(("models",)),
                                  key="server.models_max", fix="raise server.models_max or preload fewer models"))
    return errors


def _cross_checks(cfg: HostFile, file: str, lines: dict[KeyPath, int], listed: bool = False) -> list[ConfigError]:
    """Rules that span sections; each names the key to change."""
    errors = _model_checks(cfg, file, lines, listed)
    if not cfg.models and cfg.clients.claude_code and cfg.server.ctx_size and cfg.server.ctx_size < 32768:
        errors.append(ConfigError(
            f"context is {cfg.server.ctx_size} tokens but Claude Code is configured (clients.claude_code): "
            "its system prompt alone is ~24K tokens, so it fails at once",
            file=file, line=lines.get(("server", "ctx_size")), key="server.ctx_size",
            fix="set server.ctx_size: 32768 or more (0 = the model's own), or clients.claude_code: false"))
    if cfg.server.flash_attn == "off" and cfg.server.cache_type_v not in UNQUANTIZED_CACHE:
        # llama.cpp b11312 src/llama-context.cpp:3840-3848: "quantized V cache requires flash_attn to be
        # enabled", and llama_init_from_model returns no context: llama-server exits at start
        errors.append(ConfigError(
            f"flash attention is off but the V cache is quantized (cache_type_v: {cfg.server.cache_type_v}): "
            "llama-server refuses to create the context ('quantized V cache requires flash_attn to be enabled')",
            file=file, line=lines.get(("server", "flash_attn")) or lines.get(("server", "cache_type_v")),
            key="server.flash_attn",
            fix="set server.flash_attn: auto or on, or server.cache_type_v: f16 (or bf16, f32)"))
    if cfg.gateway.enabled and cfg.gateway.port == cfg.server.port:
        errors.append(ConfigError("gateway.port and server.port are the same", file=file,
                                  line=lines.get(("gateway", "port")), key="gateway.port",
                                  fix="choose another port for one of them"))
    refused = refusal(cfg.llama_cpp.backend, template_os(cfg.container.template))
    if refused:
        errors.append(ConfigError(refused[0], file=file, line=lines.get(("llama_cpp", "backend")),
                                  key="llama_cpp.backend", fix=refused[1]))
    if cfg.model is None and cfg.gateway.enabled:
        pass  # a container without a model is a valid first step; services wait for it
    return errors


def _warnings(cfg: HostFile) -> list[str]:
    out = []
    if cfg.proxmox.insecure:
        out.append("proxmox.insecure: true — TLS is NOT verified; anyone on the path can read the "
                   "API token. Pin the certificate with proxmox.fingerprint instead.")
    for where, secret in _secrets(cfg):
        if secret.value is not None:
            out.append(f"{where} is written inline in the host file; prefer env: or file:")
    if cfg.ssh.trust_on_first_use:
        out.append("ssh.trust_on_first_use: true — an unknown host key will be accepted and saved once")
    return out


def _secrets(cfg: HostFile) -> list[tuple[str, Secret]]:
    found = [("proxmox.auth.token_secret", cfg.proxmox.auth.token_secret),
             ("proxmox.auth.password", cfg.proxmox.auth.password),
             ("server.api_key", cfg.server.api_key),
             ("gateway.api_key", cfg.gateway.api_key)]
    listed = len(cfg.models) > 1
    for i, m in enumerate(cfg.models):
        where = f"models[{i}]" if listed else "model"
        found.append((f"{where}.token", m.token))
        if m.draft:
            found.append((f"{where}.draft.token", m.draft.token))
    return [(w, s) for w, s in found if s is not None]


def _merge_union_errors(errors: list[ConfigError]) -> list[ConfigError]:
    """One error per key: the branches of a union (``int | 'auto'``) become one message."""
    by_key: dict[tuple, ConfigError] = {}
    for err in errors:
        k = (err.key, err.line)
        if k in by_key:
            prev = by_key[k]
            if err.message not in prev.message:
                by_key[k] = ConfigError(f"{prev.message}; or: {err.message}", file=err.file, line=err.line,
                                        key=err.key, fix="use a value that satisfies one of these")
        else:
            by_key[k] = err
    return list(by_key.values())


def load_text(text: str, file: str = "<string>") -> Loaded:
    """Parse and validate host-file text; raise ConfigError(s) naming file and line."""
    data, lines = compose_text(text, file)
    return validate_data(data, lines, file)


def compose_text(text: str, file: str = "<string>") -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """Parse YAML text into a mapping plus the line of every key (for errors; see fleet/inventory)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"not valid YAML: {exc.problem}", file=file,
                          line=mark.line + 1 if mark else None,
                          fix="check indentation and quoting around this line") from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply", file=file, line=1,
                          fix="host files are a few levels deep") from None
    except yaml.reader.ReaderError as exc:  # a control character: not a Marked error
        raise ConfigError(f"not valid YAML: {exc.reason} (character #x{exc.character:04x})", file=file,
                          line=text.count("\n", 0, exc.position) + 1,
                          fix="remove the control character") from None
    if root is None:
        raise ConfigError("the file is empty", file=file, fix="start from an example in inventories/")
    lines: dict[KeyPath, int] = {}
    data = _construct(root, (), lines, file)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=file, line=1,
                          fix="start from an example in inventories/")
    return data, lines


def validate_data(data: dict[str, Any], lines: dict[KeyPath, int], file: str) -> Loaded:
    """Validate composed host-file data; errors name ``file`` and the line ``lines`` gives each key."""
    if data.get("model") is not None and data.get("models"):
        raise ConfigError("give model: (one model) or models: (a list), not both", file=file,
                          line=lines.get(("models",)), key="models",
                          fix="move the model: entry into the models: list")
    try:
        cfg = HostFile.model_validate(data)
    except ValidationError as exc:
        unique = _merge_union_errors([_error_for(e, file, lines) for e in exc.errors()])
        raise (unique[0] if len(unique) == 1 else ConfigErrors(unique)) from None
    cross = _cross_checks(cfg, file, lines, listed=bool(data.get("models")))
    if cross:
        raise cross[0] if len(cross) == 1 else ConfigErrors(cross)
    return Loaded(path=Path(file), config=cfg, lines=lines, warnings=tuple(_warnings(cfg)))


def load(path: str | os.PathLike[str]) -> Loaded:
    """Load a host file from disk."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(p), fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", file=str(p)) from None
    return load_text(text, str(p))


def read_secret(secret: Secret, where: str) -> str:
    """Resolve a secret from its env var, file (must not be world-readable) or inline value."""
    if secret.env is not None:
        value = os.environ.get(secret.env)
        if not value:
            raise ConfigError(f"environment variable {secret.env} is not set", key=where,
                              fix=f"export {secret.env}=... before running")
        return register(value)
    if secret.file is not None:
        p = Path(secret.file).expanduser()
        try:
            mode = p.stat().st_mode
            value = p.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {p}: {exc.strerror}", key=where,
                              fix="create it with mode 0600") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO) & (stat.S_IROTH | stat.S_IWOTH):
            raise ConfigError(f"secret file {p} is readable by others", key=where,
                              fix=f"chmod 600 {p}")
        if not value:
            raise ConfigError(f"secret file {p} is empty", key=where)
        return register(value)
    assert secret.value is not None
    return register(secret.value)
