"""agent/sepolicy/build.py: generated .te really compiles with checkmodule + semodule_package; name checks;
install refuses clearly on a host without SELinux."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.avc.assembler import parse_lines
from agent.errors import InvalidInput, InvalidModuleName, PolicyBuildError, SELinuxUnavailable
from agent.sepolicy.build import build_pp, install, module_name_of, parse_module_list
from agent.sepolicy.generate import Denylist, generate

needs_tools = pytest.mark.skipif(
    not (shutil.which("checkmodule") and shutil.which("semodule_package")),
    reason="checkmodule and semodule_package are not installed (Debian: checkpolicy, semodule-utils)")

LINES = [
    'type=AVC msg=audit(1.000:1): avc:  denied  { read open } for  pid=1 comm="cat" name="x" '
    "scontext=system_u:system_r:container_t:s0:c1,c2 tcontext=system_u:object_r:user_home_t:s0 tclass=file permissive=0",
    'type=AVC msg=audit(1.000:2): avc:  denied  { search } for  pid=1 comm="cat" name="d" '
    "scontext=system_u:system_r:container_t:s0:c1,c2 tcontext=system_u:object_r:user_home_t:s0 tclass=dir permissive=0",
    'type=AVC msg=audit(1.000:3): avc:  denied  { dac_override } for  pid=1 comm="cat" capability=1 '
    "scontext=system_u:system_r:container_t:s0:c1,c2 tcontext=system_u:system_r:container_t:s0:c1,c2 "
    "tclass=capability permissive=0",
    'type=AVC msg=audit(1.000:4): avc:  denied  { name_bind } for  pid=1 comm="nc" src=80 '
    "scontext=system_u:system_r:container_t:s0:c1,c2 tcontext=system_u:object_r:http_port_t:s0 "
    "tclass=tcp_socket permissive=0",
]


def write_te(tmp_path, name="webread"):
    denials, _ = parse_lines(LINES)
    module = generate(name, denials, ("te",), Denylist(allow_capabilities=True))
    path = tmp_path / f"{name}.te"
    path.write_text(module.te)
    return path


@needs_tools
def test_generated_te_compiles_and_packages(tmp_path):
    te = write_te(tmp_path)
    pp = build_pp(te)
    assert pp == tmp_path / "webread.pp"
    data = pp.read_bytes()
    assert len(data) > 100
    assert b"webread" in data  # the module name is stored in the package
    assert not (tmp_path / "webread.mod").exists()  # the intermediate is removed


@needs_tools
def test_output_dir_elsewhere(tmp_path):
    te = write_te(tmp_path)
    pp = build_pp(te, tmp_path / "out")
    assert pp == tmp_path / "out" / "webread.pp" and pp.exists()


@needs_tools
def test_checkmodule_errors_are_reported(tmp_path):
    bad = tmp_path / "broken.te"
    bad.write_text("module broken 1.0;\nallow nothing at all\n")
    with pytest.raises(PolicyBuildError, match="checkmodule broken.te failed"):
        build_pp(bad)


@needs_tools
def test_checkmodule_itself_refuses_a_name_mismatch(tmp_path):
    """Why module_name_of exists: the tool's own error, reproduced."""
    te = write_te(tmp_path)
    result = subprocess.run(["checkmodule", "-M", "-m", "-o", str(tmp_path / "other.mod"), str(te)],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "different than the output base filename" in (result.stderr + result.stdout)


def test_name_mismatch_is_refused_before_any_tool_runs(tmp_path):
    te = write_te(tmp_path)
    renamed = tmp_path / "other.te"
    te.rename(renamed)
    with pytest.raises(InvalidInput, match="differs from the file base name"):
        build_pp(renamed)


def test_bad_file_names(tmp_path):
    bad = tmp_path / "my-mod.te"
    bad.write_text("module my-mod 1.0;\n")
    with pytest.raises(InvalidModuleName):
        module_name_of(bad)
    with pytest.raises(InvalidInput):
        build_pp(tmp_path / "x.cil")


def test_install_without_selinux_says_so(tmp_path):
    te = write_te(tmp_path)
    pp = tmp_path / "webread.pp"
    pp.write_bytes(b"not really")
    with pytest.raises(SELinuxUnavailable, match="SELinux is not enabled on this host"):
        install(pp, selinuxfs=str(tmp_path / "no-selinuxfs"))
    with pytest.raises(InvalidInput):
        install(te, selinuxfs=str(tmp_path))
    with pytest.raises(InvalidInput):
        install(pp, priority=0)


def test_parse_module_list():
    text = "100 base              pp\n350 webread           pp\n400 local cil disabled\nNo modules.\n"
    modules = parse_module_list(text)
    assert [(m.priority, m.name, m.kind, m.disabled) for m in modules] == [
        (100, "base", "pp", False), (350, "webread", "pp", False), (400, "local", "cil", True)]


def test_cil_block_name_must_match(tmp_path):
    cil = tmp_path / "a.cil"
    cil.write_text("(block b (blockinherit container))\n")
    with pytest.raises(InvalidInput, match="block 'b'"):
        module_name_of(cil)
    assert Path(cil).exists()


STALE_SEMODULE = r"""#!/bin/sh
# A semodule that keeps the first copy of a module and still exits 0 on later installs (the failure mode of
# selinuxd issue #44): -lfull lists the store, -i stores a file unless one of that name is there, -E copies
# the stored file to the working directory.
store="$SMA_FAKE_STORE"; priority=350
while [ $# -gt 0 ]; do
    case "$1" in
        -X) priority=$2; shift 2 ;;
        -lfull) for f in "$store"/*; do [ -e "$f" ] && echo "$priority $(basename "${f%.*}") ${f##*.}"; done; exit 0 ;;
        -i) name=$(basename "$2"); [ -e "$store/$name" ] || cp "$2" "$store/$name"; exit 0 ;;
        -E) cp "$store/$2".* .; exit 0 ;;
        *) shift ;;
    esac
done
"""


@pytest.fixture
def stale_semodule(tmp_path, monkeypatch):
    """The stand-in semodule on PATH and an `enforce` file; returns the selinuxfs directory to pass."""
    bin_dir, store, selinuxfs = tmp_path / "bin", tmp_path / "store", tmp_path / "selinuxfs"
    for directory in (bin_dir, store, selinuxfs):
        directory.mkdir()
    (selinuxfs / "enforce").write_text("1")
    semodule = bin_dir / "semodule"
    semodule.write_text(STALE_SEMODULE)
    semodule.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SMA_FAKE_STORE", str(store))
    return selinuxfs


def test_install_refuses_a_store_that_kept_an_older_copy(tmp_path, stale_semodule):
    selinuxfs = stale_semodule
    first, second = tmp_path / "one" / "webread.pp", tmp_path / "two" / "webread.pp"
    for path, body in ((first, b"first build"), (second, b"second build")):
        path.parent.mkdir()
        path.write_bytes(body)
    module = install(first, priority=350, selinuxfs=str(selinuxfs))
    assert (module.name, module.priority) == ("webread", 350)
    with pytest.raises(PolicyBuildError, match="installed at priority 350 is not .*older copy"):
        install(second, priority=350, selinuxfs=str(selinuxfs))


def test_install_of_a_cil_domain_names_the_missing_template(tmp_path, stale_semodule):
    cil = tmp_path / "webread.cil"
    cil.write_text("(block webread\n    (blockinherit container)\n)\n")
    with pytest.raises(PolicyBuildError, match="base_container.cil.*udica 0.2.2.*--template-dir"):
        install(cil, selinuxfs=str(stale_semodule), template_dir=str(tmp_path / "no-templates"))
