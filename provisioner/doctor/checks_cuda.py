"""CUDA checks: toolkit vs driver vs compute capability, llama-server's CUDA libraries, and the
architectures it was built for."""

from __future__ import annotations

from .. import cuda_matrix
from ..errors import ProvisionError
from ..facts.llama import LLAMA_CT, LlamaBuild
from ..facts.nvidia import DRIVER
from ..facts.nvidia_ct import CUDA_CT, CudaPackages
from ..facts.services import LLAMA_BIN
from ..operations.cuda import chosen_toolkit, compute_caps, resolve_backend
from ..operations.llama_build import CURRENT, STAMP_NAME
from .context import DoctorContext
from .facts import CT_LLAMA, LlamaLinks
from .findings import Evidence, Finding, fail, ok, warn

CUDA_LIBS = ("libcudart.so", "libcublas.so", "libcuda.so")


def _backend(d: DoctorContext) -> str | None:
    if d.plan is None or not d.ct_facts:
        return None
    try:
        return resolve_backend(d.plan)
    except ProvisionError:
        return None


def check_toolkit(d: DoctorContext) -> list[Finding]:
    if _backend(d) != "cuda":
        return []
    driver = d.fact(DRIVER.name).version
    pkgs: CudaPackages = d.fact(CUDA_CT.name) or CudaPackages()
    stamp = (d.fact(LLAMA_CT.name) or LlamaBuild()).stamp or {}
    ev_text = [f"host driver: {driver}", f"compute capabilities: {', '.join(_ccs(d)) or '?'}",
               "installed: " + (", ".join(f"{k} {v}" for k, v in sorted(pkgs.installed.items())) or "(none)"),
               f"llama-server built with CUDA {stamp.get('toolkit') or '?'}"]
    ev = Evidence(d.in_ct("dpkg -l 'cuda-nvcc-*' 'cuda-cudart-dev-*' 'cuda-cccl-*' 'libcublas-dev-*'"),
                  "\n".join(ev_text))
    try:
        toolkit = chosen_toolkit(d.plan)  # type: ignore[arg-type]
    except ProvisionError as exc:
        return [fail("cuda.toolkit", exc.message, ev, fix=exc.fix)]
    assert toolkit is not None
    built = stamp.get("toolkit")
    if built and built in cuda_matrix.TOOLKITS and not cuda_matrix.driver_supports(built, driver):
        return [fail("cuda.toolkit", f"llama-server was built with CUDA {built}, which needs driver ≥ "
                     f"{cuda_matrix.min_driver(built)}; the host runs {driver}", ev,
                     fix=f"`provision up FILE` rebuilds with CUDA {toolkit}",
                     detail="the host driver was downgraded (or replaced) after the build; CUDA calls fail with "
                            "'the provided PTX was compiled with an unsupported toolchain' or similar")]
    if not pkgs.has_toolkit(cuda_matrix.toolkit_packages(toolkit)):
        return [warn("cuda.toolkit", f"CUDA {toolkit} (the newest that fits driver {driver}) is not installed", ev,
                     fix="`provision up FILE` installs it and rebuilds llama-server if needed")]
    return [ok("cuda.toolkit", f"CUDA {toolkit} fits driver {driver} and compute capability "
               f"{', '.join(_ccs(d))}", ev)]


def _ccs(d: DoctorContext) -> list[str]:
    try:
        return compute_caps(d.plan)  # type: ignore[arg-type]
    except ProvisionError:
        return []


def check_links(d: DoctorContext) -> list[Finding]:
    backend = _backend(d)
    if backend is None:
        return []
    links: LlamaLinks | None = d.fact(CT_LLAMA.name)
    if links is None:
        return []
    ev = Evidence(d.in_ct(f"ldd {LLAMA_BIN}"), links.raw or "(no llama-server binary)")
    if not links.binary:
        return [fail("cuda.links", f"{LLAMA_BIN} is missing", ev, fix="`provision up FILE` builds it")]
    missing = sorted(k for k, v in links.libs.items() if v == "not found")
    if missing:
        return [fail("cuda.links", f"llama-server cannot load {', '.join(missing)}", ev,
                     fix="`provision up FILE` (reinstalls the driver userspace / toolkit and rebuilds if needed)",
                     detail="a library it was linked against is gone: the service fails at start")]
    if backend != "cuda":
        return [ok("cuda.links", f"llama-server ({backend} build) has all its libraries", ev)]
    have = [lib for lib in CUDA_LIBS if any(k.startswith(lib) for k in links.libs)]
    if not {"libcudart.so", "libcuda.so"} <= set(have):
        return [fail("cuda.links", "llama-server does not link the CUDA libraries "
                     f"(found: {', '.join(have) or 'none'})", ev,
                     fix="`provision up FILE` rebuilds it with GGML_CUDA=ON",
                     detail="it was built without CUDA and runs on the CPU only")]
    return [ok("cuda.links", f"llama-server links {', '.join(have)}", ev)]


def _arch_num(a: str) -> str:
    return a.split("-", 1)[0].rstrip("af")


def check_archs(d: DoctorContext) -> list[Finding]:
    if _backend(d) != "cuda":
        return []
    build: LlamaBuild | None = d.fact(LLAMA_CT.name)
    if build is None or build.stamp is None:
        return []
    ccs = _ccs(d)
    want = cuda_matrix.architectures(ccs) if ccs else []
    built = [str(a) for a in build.architectures]
    ev = Evidence(d.in_ct(f"cat {CURRENT}/{STAMP_NAME}"),
                  f"backend: {build.stamp.get('backend')}\narchitectures: {', '.join(built) or '(none)'}\n"
                  f"GPUs need: {', '.join(want) or '?'}")
    if build.stamp.get("backend") != "cuda":
        return [fail("cuda.archs", f"llama-server was built for {build.stamp.get('backend')}, not CUDA", ev,
                     fix="`provision up FILE` rebuilds it for the GPU")]
    missing = [a for a in want if _arch_num(a) not in {_arch_num(b) for b in built}]
    if missing:
        sms = ", sm_".join(_arch_num(a) for a in missing)
        return [fail("cuda.archs", f"llama-server was not built for sm_{sms}", ev,
                     fix=f"`provision up FILE` rebuilds it with CMAKE_CUDA_ARCHITECTURES={';'.join(want)}",
                     detail="without device code for the GPU's architecture CUDA kernels fail to launch "
                            "('no kernel image is available for execution on the device')")]
    return [ok("cuda.archs", f"built for {', '.join(built)}, covering the GPU(s) ({', '.join(want)})", ev)]


CHECKS = [check_toolkit, check_links, check_archs]
