"""A static CPU llama-server for the services tests, built once on this machine and cached.

The services module tests units, health and restarts, not the llama.cpp build (the
GPU step has its own tests for that), so it installs this binary into the CT in the
layout the llama step produces (``/opt/provision/llama.cpp/builds/<id>/bin`` plus a
``current`` link) instead of compiling inside every fresh container. Static, without
OpenMP/OpenSSL, so it runs in the minimal Debian 12 container as it is.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.sim import assets


def llama_server() -> Path:
    """The cached static CPU build (see ``provisioner.sim.assets.static_llama_server``)."""
    return assets.static_llama_server()


def install_script(build_id: str) -> str:
    """Shell (run in the CT, the binary on stdin) laying it out like the llama step does."""
    root = "/opt/provision/llama.cpp"
    return (f"set -e; d={root}/builds/{build_id}; mkdir -p $d/bin; cat > $d/bin/llama-server; "
            f"chmod 0755 $d/bin/llama-server; echo '{{\"build\": \"{build_id}\", \"backend\": \"cpu\"}}' "
            f"> $d/BUILD-STAMP.json; ln -sfn $d {root}/current.tmp && mv -T {root}/current.tmp {root}/current")
