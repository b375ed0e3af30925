"""bench/relabel_floor.py and bench/_floor.c: the relabel benchmark's syscall floors, built outside the product.

Writing `security.selinux` needs CAP_SYS_ADMIN (no SELinux kernel); building needs a C compiler and the Python
headers. Without either the tests skip with the reason.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "bench"))

import relabel_floor  # noqa: E402
from agent.relabel import _walker  # noqa: E402

XATTR = "security.selinux"
LABEL = "system_u:object_r:container_file_t:s0:c1,c2"
OTHER = "system_u:object_r:container_file_t:s0:c3,c4"


@pytest.fixture(scope="module")
def floor():
    try:
        directory = relabel_floor.build()
    except relabel_floor.FloorUnavailable as err:
        pytest.skip(str(err))
    sys.path.insert(0, directory)
    try:
        import _floor
    finally:
        sys.path.remove(directory)
    return _floor.floor


def test_the_product_extension_has_no_benchmark_entry_point():
    assert not hasattr(_walker, "floor")
    assert not hasattr(_walker, "BLIND")


def test_floor_is_built_with_the_walkers_compiler_flags(tmp_path):
    flags = relabel_floor.walker_compile_args()
    assert "-O2" in flags and "-std=gnu11" in flags
    # The flags are read from setup.py without running it, as a literal or through a module-level name.
    setup = tmp_path / "setup.py"
    setup.write_text('FLAGS = ["-O3"]\nsetup(ext_modules=[Extension("agent.relabel._walker", sources=[], '
                     'extra_compile_args=FLAGS), Extension("other", extra_compile_args=["-O0"])])\n')
    assert relabel_floor.walker_compile_args(str(setup)) == ["-O3"]
    setup.write_text('setup(ext_modules=[Extension("other", extra_compile_args=["-O0"])])\n')
    with pytest.raises(relabel_floor.FloorUnavailable, match="no agent.relabel._walker Extension"):
        relabel_floor.walker_compile_args(str(setup))


@pytest.mark.parametrize("no_xattrat", [False, True], ids=["xattrat", "cwd"])
def test_floor_modes_set_get_and_compare(tmp_path, floor, no_xattrat):
    """The benchmark's floors: set writes every name, get writes none, compare writes only differing labels; by
    *xattrat, or (no_xattrat, as before Linux 6.13) from each thread's own working directory."""
    names = [f"f{i}".encode() for i in range(6)]
    try:
        for name in names:
            (tmp_path / name.decode()).write_bytes(b"")
            os.setxattr(tmp_path / name.decode(), XATTR, OTHER.encode() + b"\0")
    except OSError as err:
        pytest.skip(f"cannot write security.* xattrs here ({err.strerror}); needs CAP_SYS_ADMIN")
    dirs = [os.fsencode(tmp_path)]

    done, errors, seconds = floor(dirs, [names], LABEL.encode(), 2, relabel_floor.FLOOR_GET, no_xattrat)
    assert (done, errors) == (6, 0) and seconds >= 0
    assert all(os.getxattr(tmp_path / n.decode(), XATTR) == OTHER.encode() + b"\0" for n in names)

    os.setxattr(tmp_path / "f0", XATTR, LABEL.encode() + b"\0")
    ctime_before = os.lstat(tmp_path / "f0").st_ctime_ns
    time.sleep(0.01)
    assert floor(dirs, [names], LABEL.encode(), 2, relabel_floor.FLOOR_COMPARE, no_xattrat)[:2] == (6, 0)
    assert all(os.getxattr(tmp_path / n.decode(), XATTR) == LABEL.encode() + b"\0" for n in names)
    assert os.lstat(tmp_path / "f0").st_ctime_ns == ctime_before  # already correct: not written
    assert os.lstat(tmp_path / "f1").st_ctime_ns > ctime_before

    assert floor(dirs, [names], OTHER.encode(), 1, relabel_floor.FLOOR_SET, no_xattrat)[:2] == (6, 0)
    assert all(os.getxattr(tmp_path / n.decode(), XATTR) == OTHER.encode() + b"\0" for n in names)
    assert floor(dirs, [names + [b"missing"]], OTHER.encode(), 1, relabel_floor.FLOOR_SET, no_xattrat)[:2] == (6, 1)

    with pytest.raises(ValueError, match="mode 0, 1 or 2"):
        floor(dirs, [names], LABEL.encode(), 1, 3)
