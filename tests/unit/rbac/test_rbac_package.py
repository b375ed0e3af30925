"""The package's shape: every module but the reader is pure (no os, subprocess, socket; nothing of agent.node)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "agent" / "rbac"
IO_MODULES = {"reader.py"}
FORBIDDEN = {"os", "subprocess", "socket", "grpc", "selinux", "shutil", "agent.node", "agent.cli"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_pure_modules_do_no_io():
    modules = sorted(p for p in PACKAGE.glob("*.py") if p.name not in IO_MODULES)
    assert len(modules) >= 10
    for path in modules:
        bad = {name for name in _imports(path) for forbidden in FORBIDDEN
               if name == forbidden or name.startswith(forbidden + ".")}
        assert not bad, f"{path.name} imports {bad}"
