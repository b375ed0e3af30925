"""The enforcing guest's harness (vm/) refuses what it cannot trust before any slow step: a venv that lacks the
packages the guest takes from it, a policy tarball that is not the pinned one, a module list naming modules the
policy tree does not have. Real files and a real interpreter, no guest."""

import gzip
import hashlib
import io
import lzma
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

VM_DIR = Path(__file__).resolve().parents[2] / "vm"
sys.path.insert(0, str(VM_DIR))

import disks  # noqa: E402
import image  # noqa: E402
import policy_sources  # noqa: E402
import targeted  # noqa: E402


def _tar_bytes(files: dict[str, bytes], prefix: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime = len(data), 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def pinned(tmp_path):
    """A source pinned to one tar stream, its .tar.xz (as the local folder holds) and a .tar.gz of the same
    stream (as a download would be)."""
    stream = _tar_bytes({"README": b"policy\n", "policy/modules.conf": b"base = base\n"}, "selinux-policy-x")
    xz, gz = tmp_path / "src.tar.xz", tmp_path / "src.tar.gz"
    xz.write_bytes(lzma.compress(stream))
    gz.write_bytes(gzip.compress(stream))
    source = policy_sources.Source("selinux-policy", xz.name, hashlib.sha256(xz.read_bytes()).hexdigest(),
                                   "https://example.invalid/src.tar.gz", hashlib.sha256(stream).hexdigest())
    return source, xz, gz, stream


def test_a_pinned_tarball_passes_by_file_sum_or_by_its_tar_stream(pinned):
    source, xz, gz, _ = pinned
    policy_sources.check(source, xz)
    policy_sources.check(source, gz)  # other compression, same content: a download of the same commit


def test_a_tarball_with_other_content_is_refused(pinned, tmp_path):
    source, _, _, stream = pinned
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(gzip.compress(stream.replace(b"policy\n", b"pwned!\n")))
    with pytest.raises(policy_sources.SourceMismatch, match="refusing to build"):
        policy_sources.check(source, tampered)


def test_fetch_takes_the_local_copy_and_never_downloads_when_it_is_wrong(pinned, tmp_path, monkeypatch):
    source, xz, _, _ = pinned
    monkeypatch.setenv("SMA_POLICY_SRC", str(tmp_path))
    assert policy_sources.fetch(source, tmp_path / "cache") == xz
    wrong = replace(source, file_sha256="0" * 64, tar_sha256="1" * 64)
    with pytest.raises(policy_sources.SourceMismatch):
        policy_sources.fetch(wrong, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unpack_drops_the_archive_folder_whatever_its_name(pinned, tmp_path):
    source, _, gz, _ = pinned
    tree = policy_sources.unpack(source, gz, tmp_path / "build")
    assert (tree / "policy/modules.conf").read_text() == "base = base\n"


def test_every_flavour_is_pinned_with_full_sums():
    for flavour, sources in policy_sources.FLAVOUR_SOURCES.items():
        assert flavour in image.FLAVOURS
        for source in sources:
            assert len(source.file_sha256) == 64 and len(source.tar_sha256) == 64
            assert source.url.startswith("https://github.com/")


def test_module_selection_keeps_base_and_the_list_and_refuses_unknown_names():
    conf = "kernel = base\ninit = module\nfoo-bar = module\nzabbix = module\ncontainer = off\n"
    chosen = targeted.select_modules(conf, ["init", "foo-bar", "container"])
    assert chosen == "kernel = base\ninit = module\nfoo-bar = module\nzabbix = off\ncontainer = module\n"
    with pytest.raises(RuntimeError, match="nosuch"):
        targeted.select_modules(conf, ["init", "nosuch"])


def test_image_keys_differ_by_flavour_and_share_the_debootstrap_base():
    keys = {flavour: image.recipe_key(flavour) for flavour in image.FLAVOURS}
    assert len(set(keys.values())) == len(image.FLAVOURS)
    assert image.policy_name("debian") == "default"
    assert image.policy_name("c9s") == image.policy_name("f40") == "targeted"


def _venv_without(tmp_path, module: str) -> Path:
    """An interpreter that sees everything this one does except `module` (an import hook refuses it)."""
    script = tmp_path / "python"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}: raise ImportError('refused for the test')\n"
        "sys.meta_path.insert(0, Refuse())\n")
    script.write_text(f"#!/bin/sh\nPYTHONPATH={hook} exec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_the_venv_check_names_what_the_guest_would_lack(tmp_path):
    try:
        disks.venv_site(Path(sys.executable))
    except disks.VenvIncomplete as err:
        pytest.skip(f"this interpreter lacks the test extras itself: {err}")
    with pytest.raises(disks.VenvIncomplete, match=r"pyroute2.*make deps"):
        disks.venv_site(_venv_without(tmp_path, "pyroute2"))
    with pytest.raises(disks.VenvIncomplete, match=r"no .*make deps"):
        disks.venv_site(tmp_path / "absent" / "python")


def test_the_runner_refuses_an_incomplete_venv_in_one_line_before_anything_slow(tmp_path):
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("vm/run-enforcing-tests checks for root first")
    result = subprocess.run([sys.executable, str(VM_DIR / "run-enforcing-tests"), "--build-only"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "SMA_VM_CACHE": str(tmp_path / "cache"),
                                 "SMA_VM_VENV_PYTHON": str(tmp_path / "absent" / "python")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "make deps" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_guest_tools_are_copied_from_the_variable_and_left_out_when_absent(tmp_path, monkeypatch):
    program = tmp_path / "hostpathplugin-build"
    program.write_bytes(b"#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("HOSTPATHPLUGIN", str(program))
    assert disks._guest_tools(tmp_path / "tools") == ["hostpathplugin"]
    assert (tmp_path / "tools" / "hostpathplugin").read_bytes() == b"#!/bin/sh\n"
    monkeypatch.setenv("HOSTPATHPLUGIN", str(tmp_path / "absent"))
    monkeypatch.setattr(disks, "PROJECT", tmp_path / "clone")  # no ../shared/tools beside it
    assert disks._guest_tools(tmp_path / "none") == [] and not (tmp_path / "none").exists()
