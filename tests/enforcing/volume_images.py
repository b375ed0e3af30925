"""Test volumes: filesystem images holding many empty files, and the mount(2) call the timing tests use.

The same code builds the images on the CI host (vm/run-enforcing-tests prebuilds them, because creating
100k files under software emulation would take minutes) and inside a guest or Vagrant machine when no
prebuilt image is at hand. Images are built from a directory tree without mounting anything: ext4 with
`mkfs.ext4 -d`, xfs with an mkfs.xfs protofile.

Every image of one filesystem type has the same size whatever its file count up to the tests' largest, so
that mount times differ by file count only (ext4 images also get the same inode count). Only the benchmark's
larger trees (`bench/relabel.py --vm --sizes 1000000`) get larger images, as their inodes would not fit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from pathlib import Path

FSTYPES = ("ext4", "xfs")
IMAGE_MB = 512          # above mkfs.xfs's 300 MB minimum; sparse on disk
LARGE_IMAGE_FROM = 200_000   # files; above this an image grows by LARGE_IMAGE_BYTES_PER_FILE
LARGE_IMAGE_BYTES_PER_FILE = 1536  # xfs's 512-byte inodes and the directories, with room to spare
EXT4_INODES = 131_072   # the same inode tables for every ext4 image up to ~110k files
FILES_PER_DIR = 1000
# A file every small volume has, with known content, for the read tests.
PROBE_NAME = "probe.txt"
PROBE_TEXT = "volume probe\n"




def file_counts() -> dict[str, int]:
    """The volume sizes the tests use, overridable from the environment (the CI host passes its choice on).

    probe: a few files, for the confinement tests; label: every file's label is checked; small/large: the
    pair whose mount and relabel times are compared.
    """
    defaults = {"probe": 16, "label": 10_000, "small": 1_000, "large": 100_000}
    return {name: int(os.environ.get(f"SMA_FILES_{name.upper()}", value)) for name, value in defaults.items()}


def image_name(fstype: str, count: int) -> str:
    return f"{fstype}-{count}.img"


def file_paths(count: int) -> list[str]:
    """Relative paths of `count` files: d000/f000000 ..., FILES_PER_DIR to a directory."""
    return [f"d{index // FILES_PER_DIR:03d}/f{index:06d}" for index in range(count)]


def populate(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / PROBE_NAME).write_text(PROBE_TEXT)
    made = set()
    for relative in file_paths(count):
        directory = relative.split("/", 1)[0]
        if directory not in made:
            (root / directory).mkdir(exist_ok=True)
            made.add(directory)
        # os.open/close is several times faster than Path.touch for 100k files.
        os.close(os.open(root / relative, os.O_CREAT | os.O_WRONLY, 0o644))


def expected_entries(count: int) -> int:
    """Files and directories below the root of a volume of `count` files."""
    return count + 1 + (count + FILES_PER_DIR - 1) // FILES_PER_DIR


def image_mb(count: int) -> int:
    """The size of an image of `count` files: IMAGE_MB for every size the tests use, more for larger trees."""
    if count <= LARGE_IMAGE_FROM:
        return IMAGE_MB
    return IMAGE_MB + count * LARGE_IMAGE_BYTES_PER_FILE // (1024 * 1024)


def _make_ext4(image: Path, source: Path, count: int) -> None:
    # Lazy init off, so that no background inode-table zeroing runs while mount times are measured.
    inodes = max(EXT4_INODES, count + count // 10 + 1024)
    size_mb = image_mb(count)
    with open(image, "wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(inodes), "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    "-d", str(source), str(image), f"{size_mb}M"], check=True)


def _xfs_protofile(source: Path) -> str:
    """mkfs.xfs protofile text for a tree of directories and regular files (see xfs_mkfs(8), -p)."""
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(directory: Path):
        for entry in sorted(directory.iterdir()):
            if entry.is_dir():
                lines.append(f"{entry.name} d--755 0 0")
                walk(entry)
                lines.append("$")
            else:
                lines.append(f"{entry.name} ---644 0 0 {entry}")

    walk(source)
    lines.append("$")
    return "\n".join(lines) + "\n"


def _make_xfs(image: Path, source: Path, count: int) -> None:
    with open(image, "wb") as handle:
        handle.truncate(image_mb(count) * 1024 * 1024)
    proto = image.with_suffix(".proto")
    proto.write_text(_xfs_protofile(source))
    try:
        subprocess.run(["mkfs.xfs", "-q", "-f", "-p", str(proto), str(image)], check=True)
    finally:
        proto.unlink()


def build_image(image: Path, fstype: str, count: int, tree: Path) -> Path:
    """Write `image` holding `count` empty files (plus PROBE_NAME); `tree` is a scratch directory."""
    if fstype not in FSTYPES:
        raise ValueError(f"unsupported filesystem type {fstype!r}")
    if not tree.exists():
        populate(tree, count)
    image.parent.mkdir(parents=True, exist_ok=True)
    partial = image.with_name(image.name + ".partial")
    if fstype == "ext4":
        _make_ext4(partial, tree, count)
    else:
        _make_xfs(partial, tree, count)
    partial.rename(image)
    return image


# --- mount(2) without mount(8) ------------------------------------------------------------------------------
# The timing tests call the syscall directly: exec'ing mount(8) costs tens of milliseconds under emulation,
# more than the mount itself, and would hide any difference between volumes.

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount(source: str, target: str, fstype: str, data: str = "") -> None:
    """mount(2); `data` is the option string as the filesystem gets it, e.g. context="...:s0:c1,c2"."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype}, {data!r}): {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")
