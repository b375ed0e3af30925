"""The import contracts of pyproject.toml ([tool.importlinter]) hold on the tree, and each one bites: a copy of the
tree with one forbidden import added breaks exactly that contract (docs/architecture.md)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason=f"import-linter is not installed ({LINT} is absent)")


def lint(tree: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    args = [str(LINT), "--no-cache"] + (["--contract", contract] if contract else [])
    # The copy must be what import-linter reads, not the installed project: it imports the root packages by name.
    return subprocess.run(args, cwd=tree, capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    for name in ("agent", "csi_shim"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


# (module to edit, the import added, the contract it must break, a fragment of the report)
VIOLATIONS = [
    ("agent/kubelet/gates.py", "import os", "pure", "agent.kubelet is not allowed to import os"),
    ("agent/k8s/selinux_options.py", "import agent.node.host", "pure", "is not allowed to import agent.node"),
    # Every module of agent/rbac but its reader is held to the pure core, one added later included.
    ("agent/rbac/compaction.py", "import shutil", "pure", "agent.rbac is not allowed to import shutil"),
    ("agent/avc/poddir.py", "import os", "pure", "agent.avc.poddir is not allowed to import os"),
    ("agent/label.py", "import agent.kubelet.gates", "layers", "agent.label is not allowed to import agent.kubelet"),
    ("agent/node/mountinfo.py", "import csi_shim.plan", "composition-root", "agent.node is not allowed to import csi_shim"),
    ("agent/errors.py", "import agent.label", "acyclic", "No cycles are allowed"),
]


@pytest.mark.parametrize("module, line, contract, report", VIOLATIONS, ids=[v[2] + ":" + v[0] for v in VIOLATIONS])
def test_each_contract_breaks_on_a_forbidden_import(tree_copy, module, line, contract, report):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # added by the test\n")
        result = lint(tree_copy, contract)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    assert report in result.stdout, result.stdout
