"""deploy/selinux's module builds the way nodes build it: with the distribution's own devel Makefile and headers.
For CentOS Stream 9 and Fedora 40 those headers are made from the pinned selinux-policy and container-selinux
sources the enforcing guest's policy comes from (refpolicy's `make install-headers`, what selinux-policy-devel
ships); for Debian they are selinux-policy-dev's, where installed. Each build is real: m4, checkmodule,
semodule_package. The guest then loads the package and runs the agent in its domain (tests/enforcing)."""

import re
import shutil
import sys
from pathlib import Path

import pytest

VM_DIR = Path(__file__).resolve().parents[2] / "vm"
sys.path.insert(0, str(VM_DIR))

import agent_module  # noqa: E402
import image  # noqa: E402
import policy_sources  # noqa: E402

BUILD_TOOLS = ("make", "m4", "checkmodule", "semodule_package")


def _missing_tools() -> list[str]:
    return [tool for tool in BUILD_TOOLS if not shutil.which(tool)]


def _policy_text() -> str:
    """The .te and .if without comments."""
    text = "".join((agent_module.SOURCE_DIR / name).read_text() for name in agent_module.SOURCES[:2])
    return re.sub(r"(?m)#.*$", "", text)


def test_the_module_grants_nothing_wholesale():
    text = _policy_text()
    assert "unconfined" not in text
    assert not re.search(r"\bpermissive\b", text), "the domain must be enforced"
    rules = re.findall(r"(?m)^\s*(?:allow|allowxperm)\b[^;]*;", text)
    assert rules and not [rule for rule in rules if "*" in rule or "~" in rule]


@pytest.fixture(scope="module")
def build_tools():
    missing = _missing_tools()
    if missing:
        pytest.skip(f"cannot build policy modules here: {' '.join(missing)} missing (selinux-policy-dev, "
                    "checkpolicy, semodule-utils, m4, make)")


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["c9s", "f40"])
def test_builds_with_the_targeted_devel_headers_of_the_pinned_sources(flavour, build_tools, tmp_path):
    absent = [s.file for s in policy_sources.FLAVOUR_SOURCES[flavour]
              if not (policy_sources.local_dir() / s.file).is_file()]
    if absent:
        pytest.skip(f"pinned policy sources absent from {policy_sources.local_dir()} ({' '.join(absent)}); "
                    "this test does not download them")
    # The harness's cache ($SMA_VM_CACHE or ~/.cache/selinux-mount-agent/vm): headers made once per pinned
    # source and recipe serve these builds and vm-test's alike.
    makefile = agent_module.devel_makefile(flavour, image.cache_root())
    assert (makefile.parent / "build.conf").read_text().count("DISTRO ?= redhat") == 1
    package = agent_module.build(makefile, tmp_path / "build")
    assert agent_module.NAME.encode() in package.read_bytes()


def test_builds_with_debians_devel_headers(build_tools, tmp_path):
    if not agent_module.DEBIAN_DEVEL_MAKEFILE.is_file():
        pytest.skip(f"{agent_module.DEBIAN_DEVEL_MAKEFILE} is absent (Debian's selinux-policy-dev)")
    package = agent_module.build(agent_module.DEBIAN_DEVEL_MAKEFILE, tmp_path)
    assert agent_module.NAME.encode() in package.read_bytes()
