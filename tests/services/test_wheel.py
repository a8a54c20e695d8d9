"""The gateway's identity hash covers everything the gateway imports from this package."""

from __future__ import annotations

import ast
from pathlib import Path

from provisioner.operations.wheel import GATEWAY_CODE, PACKAGE_DIR, source_sha


def test_gateway_imports_only_what_the_hash_covers() -> None:
    covered = {name.removesuffix(".py") for name in GATEWAY_CODE}
    used: set[str] = set()
    for path in (PACKAGE_DIR / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("provisioner"):
                parts = node.module.split(".")
                used.add(parts[1] if len(parts) > 1 else node.names[0].name)
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                used.add((node.module or node.names[0].name).split(".")[0])
    assert used <= covered | {"__init__"}, used - covered


def test_hash_is_stable_and_hex() -> None:
    assert source_sha() == source_sha() and len(source_sha()) == 64
    assert Path(PACKAGE_DIR / "gateway" / "__main__.py").exists()
