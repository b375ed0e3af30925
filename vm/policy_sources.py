"""The pinned policy sources of the targeted guest flavours, found locally or downloaded, always checked.

The tarballs are `git archive` trees of the upstream repositories at fixed commits. The project's machines
keep them in a `policy-src` folder beside the tree (`../shared/policy-src`, or $SMA_POLICY_SRC); elsewhere they
are downloaded from GitHub's archive of the same commit. A local file is checked against the sha256 of the
file; a download against the sha256 of its *uncompressed* tar stream, which is exactly `git archive` of that
commit (GitHub generates the archive with it) and so stays stable while compression settings may not. A source
that matches neither sum is refused: the guest never builds an unpinned policy.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    name: str            # the folder it unpacks to, below the build directory
    file: str            # the tarball's name in the local policy-src folder
    file_sha256: str     # of that .tar.xz
    url: str             # GitHub's archive of the same commit
    tar_sha256: str      # of the uncompressed tar stream (= git archive of the commit, GitHub's prefix)


SELINUX_POLICY_C9S = Source(
    "selinux-policy", "selinux-policy-c9s-73a2d29.tar.xz",
    "50e930232300ac47cf24a0b1aad247da857448d9e8cb6374c8f97eabc1cc4dff",
    "https://github.com/fedora-selinux/selinux-policy/archive/73a2d29ae8592bc323f8bf79165ad0d19c9aadcf.tar.gz",
    "9620601b376b05d6ccc41294d53def76ceb8219cbd5868ec95e0f9ebfe30ffe3")
SELINUX_POLICY_F40 = Source(
    "selinux-policy", "selinux-policy-f40-441a8f3.tar.xz",
    "52f94e27983d1dd1bdaa41d33a0eb01d3831a1680b568cac88234b440412e379",
    "https://github.com/fedora-selinux/selinux-policy/archive/441a8f3f3327d35f5e9b55c74478e4548527c3ad.tar.gz",
    "59c621e1c5cb9e7f116ace09bda2e316fd828253e1756987463633f428e1e8f7")
CONTAINER_SELINUX = Source(
    "container-selinux", "container-selinux-2.233.0.tar.xz",
    "18317281cff2ee05e3eb823955882fa1594013b7f3d6f89472038ec8c6ca917f",
    "https://github.com/containers/container-selinux/archive/refs/tags/v2.233.0.tar.gz",
    "8607795bebfcf4192d6f6228a4b9719c8312386987bcc08d7099f406bc225296")

# Guest flavour -> the sources its policy is built from.
FLAVOUR_SOURCES = {
    "c9s": (SELINUX_POLICY_C9S, CONTAINER_SELINUX),
    "f40": (SELINUX_POLICY_F40, CONTAINER_SELINUX),
}


class SourceMismatch(RuntimeError):
    """A tarball whose checksum is not the pinned one."""


def local_dir() -> Path:
    """$SMA_POLICY_SRC, else the `shared/policy-src` folder beside the project tree."""
    explicit = os.environ.get("SMA_POLICY_SRC")
    return Path(explicit) if explicit else VM_DIR.parent.parent / "shared" / "policy-src"


def _sha256(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _open_tar_stream(path: Path):
    """The uncompressed tar stream of a .tar.xz or .tar.gz."""
    return lzma.open(path) if path.name.endswith(".xz") else gzip.open(path)


def check(source: Source, path: Path) -> None:
    """Raise SourceMismatch unless `path` is the pinned tarball (by file sum, or by uncompressed-tar sum)."""
    with open(path, "rb") as handle:
        if _sha256(handle) == source.file_sha256:
            return
    with _open_tar_stream(path) as stream:
        actual = _sha256(stream)
    if actual != source.tar_sha256:
        raise SourceMismatch(f"{path}: sha256 of its tar stream is {actual}, pinned {source.tar_sha256}; "
                             f"refusing to build from it")


def fetch(source: Source, cache: Path) -> Path:
    """The checked tarball: the local copy when there is one, else a (cached) download of the pinned commit."""
    local = local_dir() / source.file
    if local.is_file():
        check(source, local)
        return local
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / (hashlib.sha256(source.url.encode()).hexdigest()[:12] + "-" + source.url.rsplit("/", 1)[1])
    if not target.is_file():
        partial = target.with_suffix(".partial")
        print(f"== policy: downloading {source.url}", flush=True)
        with urllib.request.urlopen(source.url, timeout=120) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
        try:
            check(source, partial)
        except SourceMismatch:
            partial.unlink()
            raise
        partial.rename(target)
    check(source, target)
    return target


def unpack(source: Source, tarball: Path, into: Path) -> Path:
    """Unpack into `into/<source.name>`, dropping the archive's own top folder (which differs by origin)."""
    destination = into / source.name
    destination.mkdir(parents=True)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(destination), "--strip-components=1"], check=True)
    return destination


def key_material(flavour: str) -> bytes:
    """What the image cache key takes from the sources: their pinned sums (a new pin, a new image)."""
    return "".join(f"{s.file_sha256} {s.tar_sha256}\n" for s in FLAVOUR_SOURCES[flavour]).encode()
