"""Shared fixtures. ``sim_node``: a real simulated Proxmox node (root + lxc), see provisioner/sim/fixture.py."""

from provisioner.sim.fixture import sim_node  # noqa: F401  (registers the fixture)
