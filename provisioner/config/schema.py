"""The host file, declared once as data (pydantic models).

One file describes one Proxmox host and the one container we manage on it.
Validated config is immutable (``frozen``) and typed; nothing else in the
program reads raw YAML. Every section has defaults that describe a sensible
single-user setup, so a minimal file names only the endpoint, auth and SSH.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .paths import ct_path, host_path, local_path

# A hostname as PVE accepts it (dns-name): labels of letters, digits and '-'.
HOSTNAME_RE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$")
# Names that end up in paths, unit names and shell words: keep them boring.
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FINGERPRINT_RE = re.compile(r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$")
TOKEN_ID_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+![A-Za-z][A-Za-z0-9._-]*$")
USER_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+$")
PCI_RE = re.compile(r"^([0-9A-Fa-f]{4,8}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+.-]*$")


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(Section):
    """Where a secret comes from. Inline values need ``allow_inline: true`` and warn."""

    env: Annotated[str, Field(pattern=ENV_NAME_RE.pattern)] | None = None
    file: str | None = None
    value: str | None = Field(default=None, repr=False)
    allow_inline: bool = False

    _file = field_validator("file")(lambda v: local_path(v))

    @model_validator(mode="after")
    def _one_source(self) -> "Secret":
        sources = [s for s in (self.env, self.file, self.value) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of env, file or value")
        if self.value is not None and not self.allow_inline:
            raise ValueError("an inline secret needs 'allow_inline: true'; "
                             "prefer 'env: NAME' or 'file: /path' so the secret stays out of the file")
        return self


class Auth(Section):
    """API token (``user@realm!name`` + secret) or a password for ``root@pam``."""

    token_id: Annotated[str, Field(pattern=TOKEN_ID_RE.pattern)] | None = None
    token_secret: Secret | None = None
    user: Annotated[str, Field(pattern=USER_RE.pattern)] | None = None
    password: Secret | None = None

    @model_validator(mode="after")
    def _one_method(self) -> "Auth":
        token = self.token_id is not None or self.token_secret is not None
        password = self.user is not None or self.password is not None
        if token and password:
            raise ValueError("use either token_id/token_secret or user/password, not both")
        if token and (self.token_id is None or self.token_secret is None):
            raise ValueError("token auth needs both token_id and token_secret")
        if password and (self.user is None or self.password is None):
            raise ValueError("password auth needs both user and password")
        if not token and not password:
            raise ValueError("give token_id + token_secret, or user + password")
        return self

    @property
    def kind(self) -> Literal["token", "password"]:
        return "token" if self.token_id else "password"


class Placement(Section):
    """Where ``proxmox.node: auto`` puts a new container: a node with a free GPU like this
    (engine/placement.py). Every key given must hold; none given = any free GPU."""

    gpu: str | None = None  # a part of the model name, like gpu.select's ("4090", "RTX 5090")
    compute_capability: Annotated[str, Field(pattern=r"^\d+\.\d+$")] | None = None  # at least this
    min_vram_gb: Annotated[float, Field(gt=0)] | None = None
    gpus: Annotated[int, Field(ge=1, le=16)] = 1  # free GPUs of that kind the node must have


class Proxmox(Section):
    endpoint: Annotated[str, Field(pattern=r"^https://[^/\s]+(:\d+)?/?$")]
    #: a node name, or "auto": the node of our container, else one chosen by ``placement``
    node: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)]
    placement: Placement | None = None
    auth: Auth
    ca_file: str | None = None
    fingerprint: Annotated[str, Field(pattern=FINGERPRINT_RE.pattern)] | None = None
    insecure: bool = False
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    task_timeout: Annotated[float, Field(gt=0, le=7200)] = 900.0

    _ca_file = field_validator("ca_file")(lambda v: local_path(v))

    @model_validator(mode="after")
    def _tls(self) -> "Proxmox":
        if self.insecure and (self.ca_file or self.fingerprint):
            raise ValueError("insecure: true cannot be combined with ca_file or fingerprint")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or 8006


class NodeSSH(Section):
    """How to reach one cluster node over SSH (user, key and known_hosts as in ``ssh``)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 22


class SSH(Section):
    host: str | None = None  # default: the API endpoint's host
    #: per cluster node (name → address): the node the container is on is reached this way
    nodes: dict[Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)], NodeSSH] = {}
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    user: Literal["root"] = "root"
    key_file: str | None = None
    use_agent: bool = True
    known_hosts: str = "~/.ssh/known_hosts"
    trust_on_first_use: bool = False
    timeout: Annotated[float, Field(gt=0, le=600)] = 20.0

    _files = field_validator("key_file", "known_hosts")(lambda v: local_path(v))


class Network(Section):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,14}$")] = "eth0"
    bridge: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")] = "vmbr0"
    ip: str = "dhcp"
    gateway: str | None = None
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None
    firewall: bool = False
    hwaddr: Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")] | None = None

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        if v in ("dhcp", "manual"):
            return v
        try:
            ipaddress.IPv4Interface(v)
        except ValueError:
            raise ValueError("must be 'dhcp' or an IPv4 address with prefix, e.g. 192.168.1.50/24") from None
        if "/" not in v:
            raise ValueError("needs a prefix length, e.g. 192.168.1.50/24")
        return v

    @field_validator("gateway")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
        return v


class Mount(Section):
    """A host directory bind-mounted into the container (root-only on PVE)."""

    host: str
    path: str
    read_only: bool = False
    backup: bool = False

    @field_validator("host", "path")
    @classmethod
    def _paths(cls, v: str, info) -> str:
        if "," in v:  # it would end the path inside PVE's `mpN: <host>,mp=<path>` property string
            raise ValueError("must not contain ',' (PVE's mount point syntax cannot carry it)")
        return host_path(v, "host directory") if info.field_name == "host" else ct_path(v, "mount point")


class Features(Section):
    nesting: bool = True
    keyctl: bool = False
    fuse: bool = False


class Container(Section):
    vmid: Annotated[int, Field(ge=100, le=999999999)] | Literal["auto"] = "auto"
    hostname: Annotated[str, Field(pattern=HOSTNAME_RE.pattern, max_length=253)] = "llm"
    template: str = "debian-12-standard"
    template_storage: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] = "local"
    storage: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] = "local-lvm"
    disk_gb: Annotated[int, Field(ge=4, le=65536)] = 64
    cores: Annotated[int, Field(ge=1, le=8192)] = 4
    memory_mb: Annotated[int, Field(ge=256)] = 16384
    swap_mb: Annotated[int, Field(ge=0)] = 512
    unprivileged: bool = False
    features: Features = Features()
    onboot: bool = True
    tags: list[Annotated[str, Field(pattern=TAG_RE.pattern)]] = []
    network: Network = Network()
    nameserver: str | None = None
    searchdomain: str | None = None
    mounts: list[Mount] = []
    description: str = ""
    adopt: bool = False
    restart: Literal["never", "when-needed"] = "never"
    #: take a Proxmox snapshot `provision-YYYYmmdd-HHMMSS` before `up` makes a change that can break an existing CT
    snapshot: bool = True
    #: how many `provision-*` snapshots to keep, besides the newest one before each kind of change
    #: (engine/snapshot.py; older ones are deleted, the user's never are)
    snapshots_keep: Annotated[int, Field(ge=1, le=100)] = 3
    #: seconds apt/dpkg in the CT wait for a lock held by another process (unattended-upgrades)
    apt_lock_timeout: Annotated[int, Field(ge=0, le=86400)] = 300

    @field_validator("nameserver")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        if v is not None:
            for part in v.split():
                ipaddress.ip_address(part)
        return v


GpuSelector = int | str


class GPU(Section):
    enabled: bool = True
    select: Literal["all"] | list[GpuSelector] = "all"
    boot_fix: bool = True
    modeset: bool = False
    caps: bool = False
    #: pass GPUs even when another managed container on the node has them (operations/gpu_exclusive.py)
    share: bool = False


class Driver(Section):
    manage_userspace: bool = True
    repo_url: str = "https://developer.download.nvidia.com/compute/cuda/repos"
    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.+-]+$")]] = [
        "nvidia-driver-cuda", "libcuda1", "libnvidia-ml1"]
    #: after a host driver upgrade, the host guard (operations/guard.py) at boot and container start:
    #: ``sync`` moves the userspace to the loaded module, ``refuse`` keeps llama-server stopped, ``off``
    follow_host: Literal["sync", "refuse", "off"] = "sync"


class Cuda(Section):
    toolkit: Literal["auto"] | Annotated[str, Field(pattern=r"^\d{2}\.\d$")] = "auto"


class LlamaSource(Section):
    git: str | None = "https://github.com/ggml-org/llama.cpp"
    ref: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,100}$")] | None = "b11312"
    tarball: str | None = None
    #: the llama.cpp tree inside the tarball, e.g. "llama_cpp_python-0.3.36/vendor/llama.cpp"
    subdir: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")] | None = None

    _tarball = field_validator("tarball")(lambda v: local_path(v))

    @model_validator(mode="after")
    def _one(self) -> "LlamaSource":
        if self.subdir is not None and (self.tarball is None or ".." in self.subdir.split("/")):
            raise ValueError("subdir needs a tarball and must not contain '..'")
        if self.tarball is not None:
            object.__setattr__(self, "git", None)
            object.__setattr__(self, "ref", None)
        elif not self.git or not self.ref:
            raise ValueError("give git + ref, or tarball")
        return self


class LlamaCpp(Section):
    backend: Literal["auto", "cuda", "vulkan", "rocm", "cpu"] = "auto"
    source: LlamaSource = LlamaSource()
    rocm_targets: list[Annotated[str, Field(pattern=r"^gfx[0-9a-f]+$")]] = []
    cmake_flags: list[Annotated[str, Field(pattern=r"^-D[A-Za-z0-9_]+=[A-Za-z0-9_.;,+-]*$")]] = []
    keep_builds: Annotated[int, Field(ge=1, le=10)] = 2
    #: keep finished builds on the Proxmox host and install them into a new or re-created container
    #: with the same build spec instead of compiling again (operations/llama_cache.py)
    host_cache: bool = True


class ModelFile(Section):
    """A GGUF file from Hugging Face (``repo`` + ``file``) or a local ``path`` to push."""

    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")] | None = None
    file: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*\.gguf$")] | None = None
    revision: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,100}$")] = "main"
    path: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    token: Secret | None = None

    _path = field_validator("path")(lambda v: local_path(v))

    @model_validator(mode="after")
    def _source(self) -> "ModelFile":
        hub = self.repo is not None or self.file is not None
        if hub and self.path:
            raise ValueError("give repo + file (Hugging Face) or path (a local file), not both")
        if hub and not (self.repo and self.file):
            raise ValueError("a Hugging Face model needs both repo and file")
        if not hub and not self.path:
            raise ValueError("give repo + file, or path")
        if self.file and ".." in self.file.split("/"):
            raise ValueError("file must not contain '..'")
        return self

    @property
    def filename(self) -> str:
        return (self.file or self.path or "").rsplit("/", 1)[-1]


CacheType = Literal["f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "bf16", "f32"]
#: names the gateway gives Claude Code's own model slots and families (provisioner/gateway/models.py);
#: an alias may not take one of them, or the slot mapping could not reach it
RESERVED_ALIASES = frozenset({"main", "small_fast", "opus", "sonnet", "haiku"})


class Model(ModelFile):
    """One model: its file, its alias (the name clients ask for), and its own serving settings.

    Every serving key left out here takes the value of ``server:`` (so one model keeps working
    exactly as before); under ``models:`` each entry may override them for itself.
    """

    #: the name clients and the gateway use (``name`` is the older spelling of the same key)
    alias: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] | None = None
    name: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] | None = None
    location: Literal["host", "container"] = "host"
    host_dir: str = "/var/lib/provision/models"
    dir: str = "/srv/models"
    draft: ModelFile | None = None
    # -- serving settings of this model (None: the server: section's) --------------------------
    ctx_size: Annotated[int, Field(ge=0)] | None = None
    parallel: Annotated[int, Field(ge=1, le=64)] | None = None
    ngl: Literal["auto", "all"] | Annotated[int, Field(ge=0)] | None = None
    fit: bool | None = None
    flash_attn: Literal["on", "off", "auto"] | None = None
    cache_type_k: CacheType | None = None
    cache_type_v: CacheType | None = None
    reasoning: Literal["on", "off", "auto"] | None = None
    reasoning_budget: int | None = None
    override_kv: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+=(int|float|bool|str):[A-Za-z0-9_.-]+$")]] | None = None
    #: router mode: load this model when llama-server starts instead of at its first request
    preload: bool = False

    @model_validator(mode="after")
    def _one_name(self) -> "Model":
        if self.alias is not None and self.name is not None and self.alias != self.name:
            raise ValueError("give alias (or its older spelling name), not both")
        if self.model_id in RESERVED_ALIASES:
            raise ValueError(f"{self.model_id!r} is one of the names the gateway keeps for Claude Code's slots "
                             f"({', '.join(sorted(RESERVED_ALIASES))}); choose another alias")
        return self

    @field_validator("host_dir")
    @classmethod
    def _host_dir(cls, v: str) -> str:
        return host_path(v, "models directory on the host")

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        return ct_path(v, "models directory in the container")

    @property
    def model_id(self) -> str:
        return self.alias or self.name or self.filename.removesuffix(".gguf")


class Server(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    ctx_size: Annotated[int, Field(ge=0)] = 32768
    parallel: Annotated[int, Field(ge=1, le=64)] = 1
    #: tokens of KV cache for a second slot, so Claude Code's background requests (titles, its small
    #: fast model) run beside the main request instead of queueing behind it (operations/units.py
    #: ``slot_layout``); 0 = one slot only. Used when parallel is 1 and ctx_size is set.
    background_slot: Annotated[int, Field(ge=0, le=262144)] = 4096
    flash_attn: Literal["on", "off", "auto"] = "auto"
    cache_type_k: CacheType = "q8_0"
    cache_type_v: CacheType = "q8_0"
    ngl: Literal["auto", "all"] | Annotated[int, Field(ge=0)] = "auto"
    fit: bool = True
    metrics: bool = True
    reasoning: Literal["on", "off", "auto"] = "auto"
    reasoning_budget: int | None = None
    api_key: Secret | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    override_kv: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+=(int|float|bool|str):[A-Za-z0-9_.-]+$")]] = []
    extra_args: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:=,/+-]+$")]] = []
    health_timeout: Annotated[float, Field(gt=0)] = 600.0
    #: several models (router mode): how many may be loaded at once (llama-server --models-max);
    #: default: all of them. The VRAM check sums the largest this many.
    models_max: Annotated[int, Field(ge=1, le=64)] | None = None


class Gateway(Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 4000
    mode: Literal["translate", "native"] = "translate"
    api_key: Secret | None = None
    model_aliases: dict[str, str] = {}


class ClaudeCodeSlots(Section):
    """Which model serves which of Claude Code's jobs (aliases from ``models:``)."""

    #: its main model (ANTHROPIC_MODEL, and the opus/sonnet names); default: the first model
    main: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] | None = None
    #: background work: titles, summaries, ... (ANTHROPIC_DEFAULT_HAIKU_MODEL / ANTHROPIC_SMALL_FAST_MODEL);
    #: default: the main model
    small_fast: Annotated[str, Field(pattern=SAFE_NAME_RE.pattern)] | None = None


class ClaudeCodeClient(Section):
    """``clients.claude_code``: ``true``/``false``, or this mapping (``enabled`` + the slot mapping)."""

    enabled: bool = True
    models: ClaudeCodeSlots = ClaudeCodeSlots()

    def __bool__(self) -> bool:  # `if cfg.clients.claude_code:` keeps meaning "Claude Code is configured"
        return self.enabled


class Clients(Section):
    #: ``true``/``false`` (the older form) or the mapping; always a ClaudeCodeClient once validated
    claude_code: ClaudeCodeClient | bool = ClaudeCodeClient()
    pi: bool = False
    claude_code_router: bool = False
    base_url: str | None = None  # how clients reach the gateway; default http://<ct-ip>:<port>
    output_dir: str = "~/.config/provision/clients"

    _output_dir = field_validator("output_dir")(lambda v: local_path(v))

    @field_validator("claude_code", mode="before")
    @classmethod
    def _claude_code_bool(cls, v: object) -> object:
        return {"enabled": v} if isinstance(v, bool) else v


class HostDriver(Section):
    """The Proxmox host's own NVIDIA driver (``provision host FILE``). Off by default: without
    ``manage: true`` provision only reads the host's driver and never changes it."""

    manage: bool = False
    #: an exact version ("595.71.05") or the newest of a branch ("latest-595")
    version: Annotated[str, Field(pattern=r"^(\d{3}\.\d{1,3}(\.\d{1,3})?|latest-\d{3})$")] | None = None
    #: open kernel module (Turing and newer; the seed's choice) or NVIDIA's proprietary one
    flavour: Literal["open", "proprietary"] = "open"
    #: seconds `--reboot` waits for the host to come back
    reboot_timeout: Annotated[float, Field(gt=0, le=7200)] = 600.0

    @model_validator(mode="after")
    def _version(self) -> "HostDriver":
        if self.manage and self.version is None:
            raise ValueError('manage: true needs a version, e.g. version: "595.71.05" or "latest-595"')
        return self


class HostSection(Section):
    driver: HostDriver = HostDriver()


class HostFile(Section):
    """The whole host file."""

    version: Literal[1] = 1
    proxmox: Proxmox
    ssh: SSH = SSH()
    container: Container = Container()
    gpu: GPU = GPU()
    driver: Driver = Driver()
    cuda: Cuda = Cuda()
    llama_cpp: LlamaCpp = LlamaCpp()
    #: one model (the older form: a list of one)
    model: Model | None = None
    #: several models behind one endpoint (llama-server's router mode); the first is the default
    models: Annotated[list[Model], Field(max_length=64)] = []
    server: Server = Server()
    gateway: Gateway = Gateway()
    clients: Clients = Clients()
    host: HostSection = HostSection()

    @model_validator(mode="before")
    @classmethod
    def _model_or_models(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("model") is not None and data.get("models"):
            raise ValueError("give model: (one model) or models: (a list), not both")
        return data

    @model_validator(mode="after")
    def _one_list(self) -> "HostFile":
        """``models`` is always the full list and ``model`` its first entry (code that serves one model
        reads ``model``; code that serves them all iterates ``models``)."""
        if self.models:
            object.__setattr__(self, "model", self.models[0])
        elif self.model is not None:
            object.__setattr__(self, "models", [self.model])
        return self

    @model_validator(mode="after")
    def _auto_node(self) -> "HostFile":
        if self.proxmox.node == "auto" and not self.ssh.nodes:
            raise ValueError("proxmox.node: auto needs ssh.nodes (the SSH address of each node it may use)")
        if self.proxmox.placement is not None and self.proxmox.node != "auto":
            raise ValueError("proxmox.placement needs proxmox.node: auto (a named node is used as it is)")
        return self
