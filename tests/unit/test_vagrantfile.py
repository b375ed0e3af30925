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
    assert "container-selinux" in text
    assert "setenforce 1" in text


def test_vagrant_runs_the_ci_guests_pytest_entry_point():
    """The same selection as vm/guest/run-tests, so a Vagrant machine and CI run the same tests."""
    entry = "-m pytest -m enforcing tests/enforcing -p no:cacheprovider"
    assert entry in VAGRANTFILE.read_text()
    assert entry in (VAGRANTFILE.parents[1] / "vm" / "guest" / "run-tests").read_text()
