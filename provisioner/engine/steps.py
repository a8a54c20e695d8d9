"""The steps of `up`, in order. Each domain adds its step here, nowhere else."""

from __future__ import annotations

from ..config.schema import HostFile
from .plan import Step


def all_steps(cfg: HostFile) -> list[Step]:
    from ..operations.container import ContainerStep
    from ..operations.cuda import CudaStep
    from ..operations.driver import DriverStep
    from ..operations import guard  # noqa: F401  (registers the hookscript with the container step)
    from ..operations.llama import LlamaStep
    from ..operations.passthrough import GpuHostStep  # also contributes devN to the container step

    # gpu.host comes first: PVE refuses a devN whose host node is missing, and
    # /dev/nvidia-uvm often is until nvidia_uvm is loaded.
    steps: list[Step] = [GpuHostStep(), ContainerStep(), DriverStep(cfg), CudaStep(), LlamaStep()]

    # model, services, verify (issue 5). The models directory on the host must exist before the
    # container starts with its bind mount. An immutable resolv.conf of a running container is
    # removed *before* the container step: its restart (pending keys, `up --restart`) would
    # otherwise stop the container and fail to start it again (issue 20, point 1).
    from ..operations.model import ModelHostDirStep, ModelStep
    from ..operations.resolv import ResolvStep
    from ..operations.services import ServicesStep
    from ..operations.verify import VerifyStep

    steps.insert(steps.index(next(s for s in steps if s.name == "container")), ModelHostDirStep(cfg))
    steps.insert(steps.index(next(s for s in steps if s.name == "container")), ResolvStep())
    steps += [ModelStep(cfg), ServicesStep(cfg), VerifyStep(cfg)]
    return steps
