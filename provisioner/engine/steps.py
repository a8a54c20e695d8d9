"""The steps of `up`, in order. Each domain adds its step here, nowhere else."""

from __future__ import annotations

from ..config.schema import HostFile
from .plan import Step


def all_steps(cfg: HostFile) -> list[Step]:
    from ..operations.container import ContainerStep

    steps: list[Step] = [ContainerStep()]
    return steps
