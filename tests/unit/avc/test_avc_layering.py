"""The AVC package's shape: no import cycle, pure modules free of I/O imports and of module-level caches,
and nothing in it importing the CSI shim or the metric objects above it (agent/metrics.py imports avc's
layer, not the reverse). Read from the source, so a function-level import counts too."""

import ast
import functools
import importlib
from pathlib import Path

import pytest

from agent.avc.record import BoundedCache

AVC = Path(__file__).resolve().parents[3] / "agent" / "avc"
PURE = ("record", "denial", "fastpath", "assembler", "cgroup", "poddir", "attribution")
FORBIDDEN = ("os", "subprocess", "socket", "grpc", "selinux", "agent.node")


def imports(name: str) -> set[str]:
    """Every module named by an import statement anywhere in agent/avc/<name>.py."""
    out = set()
    for node in ast.walk(ast.parse((AVC / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


MODULES = sorted(path.stem for path in AVC.glob("*.py") if path.stem != "__init__")


def test_no_import_cycle_inside_the_package():
    graph = {name: {dep.removeprefix("agent.avc.") for dep in imports(name) if dep.startswith("agent.avc.")}
             for name in MODULES}
    done: set[str] = set()

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join(path + [name])}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, path + [name])
        done.add(name)

    for name in MODULES:
        visit(name, [])


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name):
    bad = {dep for dep in imports(name) if dep in FORBIDDEN or dep.split(".")[0] in FORBIDDEN
           or dep.startswith("agent.node")}
    assert not bad


@pytest.mark.parametrize("name", MODULES)
def test_nothing_in_avc_imports_the_shim_or_the_layers_above(name):
    above = {dep for dep in imports(name) if dep.split(".")[0] == "csi_shim"
             or dep in ("agent.metrics", "agent.daemon") or dep.startswith("agent.cli")}
    assert not above


@pytest.mark.parametrize("name", PURE + ("applied",))
def test_no_module_level_caches(name):
    module = importlib.import_module(f"agent.avc.{name}")
    caches = [key for key, value in vars(module).items()
              if isinstance(value, BoundedCache) or isinstance(value, functools._lru_cache_wrapper)]
    assert not caches
