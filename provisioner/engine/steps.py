"""The steps of `up`, in order. Each domain adds its step here, nowhere else."""

from __future__ import annotations

from ..config.schema import HostFile
from .plan import Step


def all_steps(cfg: HostFile) -> list[Step]:
    from ..operations.container import ContainerStep
    from ..operations.cuda import CudaStep
    from ..operations.driver import DriverStep
    from ..operations.llama import LlamaStep
    from ..operations.passthrough import GpuHostStep  # also contributes devN to the container step

    # gpu.host comes first: PVE refuses a devN whose host node is missing, and
    # /dev/nvidia-uvm often is until nvidia_uvm is loaded.
    steps: list[Step] = [GpuHostStep(), ContainerStep(), DriverStep(), CudaStep(), LlamaStep()]
    return steps
