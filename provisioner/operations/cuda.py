"""The CUDA toolkit in the container: the newest that fits the host driver and every GPU.

The choice is ``cuda_matrix.pick_toolkit`` (REFERENCE §3 as data, corrected there): among the
toolkits NVIDIA's repository really offers (``ct.cuda``: the ``cuda-nvcc-X-Y`` names apt knows
once the driver step added the repository; before that, the table, which lists only what the
debian12/13 repositories carry), by the toolkit's own minimum driver, else by minor-version
compatibility; the plan says which rule picked it. Only the packages llama.cpp needs are
installed (nvcc, cudart headers, CCCL, cuBLAS). Older toolkits stay installed (harmless: the
build names ``/usr/local/cuda-X.Y`` explicitly, see llama_build.configure_args).
"""

from __future__ import annotations

import shlex

from .. import cuda_matrix
from ..engine.context import ApplyContext, PlanContext
from ..engine.plan import Change
from ..errors import ConfigError, RemoteError
from ..facts.nvidia import DRIVER, GPUS
from ..facts.nvidia_ct import CUDA_CT, CudaPackages
from . import apt
from .passthrough import selected_gpus

STEP = "cuda"


def resolve_backend(ctx: PlanContext) -> str:
    """``llama_cpp.backend``, with ``auto`` = cuda when NVIDIA GPUs are selected, else cpu."""
    backend = ctx.cfg.llama_cpp.backend
    if backend == "auto":
        return "cuda" if selected_gpus(ctx) else "cpu"
    if backend == "cuda" and not selected_gpus(ctx):
        raise ConfigError("llama_cpp.backend is cuda but no NVIDIA GPU is passed through (no driver loaded, "
                          "no GPU found, or gpu.enabled: false)", key="llama_cpp.backend",
                          fix="set llama_cpp.backend: auto or cpu, or fix the host driver")
    return backend


def compute_caps(ctx: PlanContext) -> list[str]:
    gpus = selected_gpus(ctx)
    missing = [g.name for g in gpus if not g.compute_cap]
    if missing:
        raise ConfigError(f"cannot tell the compute capability of {', '.join(missing)}", key="gpu.select",
                          fix="upgrade the host driver (nvidia-smi reports compute_cap since ~510) "
                              "or select other GPUs")
    return sorted({g.compute_cap for g in gpus if g.compute_cap}, key=cuda_matrix.vtuple)


def toolkit_choice(ctx: PlanContext) -> cuda_matrix.ToolkitChoice | None:
    """The toolkit the build uses and the rule that picked it, None for non-CUDA backends."""
    if resolve_backend(ctx) != "cuda":
        return None
    driver = ctx.fact(DRIVER.name).version
    pkgs: CudaPackages | None = ctx.fact(CUDA_CT.name)
    available = pkgs.available if pkgs and pkgs.available else None
    return cuda_matrix.pick_toolkit(driver, compute_caps(ctx), ctx.cfg.cuda.toolkit, available)


def chosen_toolkit(ctx: PlanContext) -> str | None:
    """The toolkit the build uses ("13.0"), None for non-CUDA backends."""
    choice = toolkit_choice(ctx)
    return choice.version if choice else None


class CudaStep:
    name = STEP
    facts = [DRIVER, GPUS, CUDA_CT]

    def plan(self, ctx: PlanContext) -> list[Change]:
        choice = toolkit_choice(ctx)
        if choice is None:
            return []
        toolkit = choice.version
        if choice.rule == cuda_matrix.MINOR_COMPAT:
            ctx.notes.append(f"CUDA {toolkit} by {choice.why}")
        packages = cuda_matrix.toolkit_packages(toolkit)
        pkgs: CudaPackages | None = ctx.fact(CUDA_CT.name)
        if pkgs is not None and pkgs.has_toolkit(packages):
            return []
        target = f"ct {ctx.vmid}" if ctx.vmid else "ct (new)"
        diff = {p: (pkgs.installed.get(p) if pkgs else None, "install") for p in packages
                if not (pkgs and p in pkgs.installed)}

        def apply(actx: ApplyContext) -> None:
            install_toolkit(actx, toolkit, packages)

        return [Change(STEP, "install", target, f"CUDA toolkit {toolkit} ({', '.join(packages)}); {choice.why}",
                       apply, diff=diff)]


def install_toolkit(actx: ApplyContext, toolkit: str, packages: list[str]) -> None:
    actx.status(f"installing CUDA toolkit {toolkit}")
    script = (apt.prelude_for(actx.cfg) + "set -e\nexport DEBIAN_FRONTEND=noninteractive\napt_get update -q\n"
              f"apt_get -y --no-install-recommends install {' '.join(shlex.quote(p) for p in packages)}\n"
              f"/usr/local/cuda-{toolkit}/bin/nvcc --version | grep -q 'release {toolkit}'\n")
    result = actx.ct().run(script, on_line=apt.on_line(actx))
    if not result.ok:
        raise RemoteError(f"installing CUDA toolkit {toolkit} failed", command="apt-get install",
                          exit_code=result.exit_code, output=result.stderr or result.stdout,
                          vmid=actx.vmid, step=STEP)
