"""doctor's service tests run the shared static CPU llama-server in its OpenMP flavour: it links
libgomp.so.1 dynamically, as the llama step's builds do, so a container without libgomp1 shows the
missing-library finding. See ``provisioner.sim.assets.static_llama_server``."""

from __future__ import annotations

from pathlib import Path

from provisioner.sim import assets


def llama_server() -> Path:
    return assets.static_llama_server(openmp=True)
