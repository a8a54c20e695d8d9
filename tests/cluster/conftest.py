"""``sim_cluster``: a 2-node simulated PVE cluster (provisioner/sim/fixture.py)."""

from provisioner.sim.fixture import sim_cluster  # noqa: F401  (registers the fixture)
