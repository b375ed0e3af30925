"""vagrant/Vagrantfile cannot be brought up on CI; it must at least parse as Ruby and name what it promises."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANTFILE = Path(__file__).resolve().parents[2] / "vagrant" / "Vagrantfile"


def test_vagrantfile_parses_as_ruby():
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed; cannot check vagrant/Vagrantfile's syntax")
    result = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Syntax OK" in result.stdout


def test_vagrantfile_defines_both_machines_and_providers():
    text = VAGRANTFILE.read_text()
    for machine in ("fedora", "centos"):
        assert re.search(rf'^\s*"{machine}" => \{{', text, re.M), f"no {machine} machine"
    for provider in ("libvirt", "virtualbox"):
        assert f'config.vm.provider "{provider}"' in text
    for package in ("selinux-policy-targeted", "container-selinux", "runc"):
        assert package in text, f"the machines do not install {package}"
    assert "setenforce 1" in text


def test_vagrant_runs_the_ci_guests_pytest_entry_point():
    """The same selection as vm/guest/run-tests, so a Vagrant machine and CI run the same tests."""
    entry = "-m pytest -m enforcing tests/enforcing -p no:cacheprovider"
    assert entry in VAGRANTFILE.read_text()
    assert entry in (VAGRANTFILE.parents[1] / "vm" / "guest" / "run-tests").read_text()


def _validate(vagrantfile_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`vagrant validate` with its state kept out of the tree (no .vagrant/ next to the Vagrantfile)."""
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (Debian package vagrant); cannot validate vagrant/Vagrantfile")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path),
           "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"),
           "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1"}
    return subprocess.run([vagrant, "validate"], cwd=vagrantfile_dir, env=env,
                          capture_output=True, text=True, timeout=300)


def test_vagrant_validates_the_vagrantfile(tmp_path):
    """Vagrant's own checks of every machine's settings and of the libvirt provider's (Debian's vagrant brings the
    vagrant-libvirt plugin; VirtualBox's settings go unchecked without VirtualBox), with no machine booted."""
    result = _validate(VAGRANTFILE.parent, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


@pytest.mark.parametrize("edit", [("node.vm.hostname =", "node.vm.hostnme ="),
                                  ("libvirt.memory = 4096", "libvirt.memroy = 4096")])
def test_vagrant_validate_catches_a_misspelt_setting(tmp_path, edit):
    """The check above can fail: the same file with one setting misspelt is refused, naming it."""
    copy = tmp_path / "project" / "vagrant"
    copy.mkdir(parents=True)
    text = VAGRANTFILE.read_text()
    assert edit[0] in text
    (copy / "Vagrantfile").write_text(text.replace(edit[0], edit[1]))
    result = _validate(copy, tmp_path)
    assert result.returncode != 0
    assert edit[1].split(".")[-1].split()[0] in result.stdout + result.stderr
