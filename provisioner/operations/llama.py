"""llama.cpp's llama-server, built in the container for exactly this machine.

The build is skipped when the serving build's stamp (source, backend, architectures,
toolkit, flags) has the same hash as the one we would make now. Otherwise, when the
Proxmox host keeps that build already (``llama_cache.py``), it is installed from there;
else the source is fetched (git) or pushed (a local tarball, keyed by its sha256), the
build runs in the container with its log streamed to ``ApplyContext.log`` and
its progress to ``status``, and ``current`` flips only after ``--version`` (and
for CUDA, ``ldd``) pass. A failed build leaves the previous one serving. A finished
build is then kept on the host for the next container with the same spec.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import time
from functools import lru_cache
from pathlib import Path

from .. import cuda_matrix
from ..backends import refusal
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError, RemoteError
from ..facts.llama import LLAMA_CT, LLAMA_HOST_CACHE, LlamaBuild
from ..facts.nvidia import DRIVER, GPUS
from ..facts.nvidia_ct import CUDA_CT
from . import llama_cache
from .cuda import chosen_toolkit, compute_caps, resolve_backend
from .llama_build import (
    CURRENT,
    BuildSpec,
    build_script,
    from_cache_script,
    tarball_path,
)

STEP = "llama"
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


@lru_cache(maxsize=8)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tarball_sha256(path: str) -> str:
    """sha256 of a local tarball (cached by size and mtime: plans run often)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise ConfigError(f"the llama.cpp tarball {p} does not exist", key="llama_cpp.source.tarball",
                          fix="download it (e.g. `pip download --no-deps --no-binary :all: "
                              "llama-cpp-python==0.3.36 -d DIR`) or use git + ref") from None
    return _sha256_file(str(p), st.st_size, st.st_mtime_ns)


def build_spec(ctx: PlanContext) -> BuildSpec:
    """The build this host file asks for on this machine."""
    lc = ctx.cfg.llama_cpp
    backend = resolve_backend(ctx)
    have: LlamaBuild | None = ctx.fact(LLAMA_CT.name)
    refused = refusal(backend, have.os_release if have else None)  # the template's OS: checked at load
    if refused:
        raise ConfigError(f"{refused[0]} (this container runs {have.os_release if have else '?'})",
                          key="llama_cpp.backend", fix=refused[1])
    if lc.source.tarball:
        source: dict[str, str | None] = {"tarball_sha256": tarball_sha256(lc.source.tarball),
                                         "subdir": lc.source.subdir}
    else:
        source = {"git": lc.source.git, "ref": lc.source.ref}
    archs: tuple[str, ...] = ()
    toolkit = None
    if backend == "cuda":
        toolkit = chosen_toolkit(ctx)
        archs = tuple(cuda_matrix.architectures(compute_caps(ctx)))
    return BuildSpec(backend=backend, source=source, architectures=archs, toolkit=toolkit,
                     rocm_targets=tuple(lc.rocm_targets) if backend == "rocm" else (),
                     flags=tuple(lc.cmake_flags))


class LlamaStep:
    name = STEP
    # the backend and arches depend on the GPUs; the host cache on the host's CPU and entries
    facts = [DRIVER, GPUS, CUDA_CT, LLAMA_CT, LLAMA_HOST_CACHE]

    def plan(self, ctx: PlanContext) -> list[Change]:
        spec = build_spec(ctx)
        have: LlamaBuild | None = ctx.fact(LLAMA_CT.name)
        if have is not None and have.hash == spec.hash and have.binary:
            ctx.notes.append(f"llama-server build {spec.hash} ({spec.backend}) is current: no rebuild")
            return []
        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
        before = have.stamp if have and have.stamp else None
        diff: dict[str, tuple[object, object]] = {"build": (have.hash if have else None, spec.hash)}
        for key in ("backend", "architectures", "toolkit", "source", "flags"):
            new = spec.stamp()[key]
            old = before.get(key) if before else None
            if old != new:
                diff[key] = (old, new)

        key, cached = llama_cache.lookup(ctx, spec)
        os_release = llama_cache.container_os(ctx)
        sms = ",".join(str(cuda_matrix.arch_number(a)) for a in spec.architectures)
        what = spec.backend + (f" sm {sms}, CUDA {spec.toolkit}"
                               if spec.backend == "cuda" else "")
        if key and cached:
            diff["host_cache"] = (None, key)
            return [Change(STEP, "install", target, f"llama-server {spec.hash} ({what}) from host cache {key}",
                           lambda actx: install_cached(actx, spec, key, os_release), diff=diff)]
        return [Change(STEP, "build", target, f"build llama-server ({what})",
                       lambda actx: build_and_keep(actx, spec, key, os_release), diff=diff)]


def install_cached(actx: ApplyContext, spec: BuildSpec, key: str, os_release: str | None) -> None:
    """The host's build into the container, checked like a fresh one; a bad or vanished entry is removed
    and the container builds after all."""
    actx.status(f"llama-server {spec.hash} from the host cache ({key})")
    runtime = llama_cache.push(actx, spec, key)
    if runtime is not None:
        script = from_cache_script(spec, key=key, runtime=runtime, keep_builds=actx.cfg.llama_cpp.keep_builds)
        result = actx.ct().run(script, on_line=actx.log)
        if result.ok:
            return
        actx.log(f"the cached build {key} failed its checks in CT {actx.vmid} (exit {result.exit_code}): "
                 "removed from the host cache; building instead")
        llama_cache.forget(actx, key)
    build_and_keep(actx, spec, key, os_release)


def build_and_keep(actx: ApplyContext, spec: BuildSpec, key: str | None, os_release: str | None) -> None:
    t0 = time.monotonic()
    run_build(actx, spec)
    if key and os_release:
        actx.status(f"keeping build {spec.hash} in the host cache")
        llama_cache.store(actx, spec, key, os_release, time.monotonic() - t0)


def push_tarball(actx: ApplyContext, spec: BuildSpec) -> None:
    """Send the local tarball into the container once (keyed by its sha256)."""
    assert actx.cfg.llama_cpp.source.tarball
    dest = tarball_path(spec)
    have = actx.ct().run(f"[ -s {shlex.quote(dest)} ] && sha256sum {shlex.quote(dest)}")
    if have.ok and have.stdout.split()[:1] == [spec.source["tarball_sha256"]]:
        return
    local = os.path.expanduser(actx.cfg.llama_cpp.source.tarball)
    actx.status(f"pushing {os.path.basename(local)} into CT {actx.vmid}")
    actx.ct().put(Path(local).read_bytes(), dest, mode="0644")


def run_build(actx: ApplyContext, spec: BuildSpec) -> None:
    if spec.source.get("tarball_sha256"):
        push_tarball(actx, spec)
    actx.status(f"building llama-server {spec.hash}")
    phase = {"name": "start"}

    def on_line(line: str) -> None:
        actx.log(line)
        if line.startswith("@@progress "):
            phase["name"] = line.split(" ", 1)[1]
            actx.status(f"llama.cpp: {phase['name']}")
        else:
            m = _PERCENT.match(line)
            if m:
                actx.status(f"llama.cpp: building llama-server {m.group(1)}%")

    script = build_script(spec, keep_builds=actx.cfg.llama_cpp.keep_builds)
    result = actx.ct().run(script, on_line=on_line)
    if not result.ok:
        output = result.stdout + result.stderr
        raise RemoteError(f"building llama-server failed during '{phase['name']}' (exit {result.exit_code}); "
                          f"the previous build (if any) keeps serving from {CURRENT}",
                          command="llama.cpp build script", exit_code=result.exit_code,
                          output=output, vmid=actx.vmid, step=STEP, fix=build_fix(output))


def build_fix(output: str) -> str | None:
    """What to do about a failed build, where its output tells. gcc prints "Killed signal terminated
    program cc1plus" when the kernel's OOM killer ends the compiler (seen building the Vulkan backend,
    whose ggml-vulkan.cpp carries every shader, in a 4 GB container with 2 jobs)."""
    if "Killed signal terminated program" in output:
        return ("the compiler was killed, most likely out of memory: raise container.memory_mb "
                "(the Vulkan and CUDA backends need several GB per compile job) and run `up` again")
    return None
