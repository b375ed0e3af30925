"""A stand-in for csi_shim.mounter's kernel side: mount(2), umount(2), loop devices and mountinfo, kept as an
in-memory mount table. Everything else a handler does stays real: the request checks, the plan, the records
and journal, the locks, and the directories opened beneath the kubelet root with openat2 (on temp dirs).

A "mount" here is a row of the table at the real path of the directory it was made on; nothing appears
inside that directory. The table is what `mounts()`, `top_mount()` and `open_top()` report, topmost last,
the way mountinfo lists stacked mounts.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from concurrent import futures

import grpc

from agent.errors import LabelConflict, MountFailed
from agent.node.mountinfo import Mount, split_options
from csi_shim.fdpath import KubeletRoot
from csi_shim.mounter import shared_superblock_conflict
from csi_shim.plan import MS_BIND, MS_RDONLY, MS_REMOUNT
from csi_shim.server import ErrorMapping
from csi_shim.journal import State
from tests.root.csi_helpers import Client, shim_config

LOOP_MAJOR = 7


def _real(path: str | int) -> str:
    """The directory a /proc/self/fd/N name (or a descriptor) stands for, as mountinfo would list it."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    return os.readlink(path) if path.startswith("/proc/self/fd/") else path


class FakeMounter:
    """The functions of csi_shim.mounter that touch the kernel, over an in-memory mount table.

    `selinux`: whether a context mount keeps its `context=` (False: the kernel drops it, as on this host).
    `read_only_filesystems`: mounts of these fs types come up read-only (a reader-only filesystem).
    `fail_next`: an exception the next mount(2) raises after nothing was mounted (a failed mount).
    `calls`: every kernel operation, in order, for asserting the sequence a handler followed.
    `mount_seconds`: how long each mount(2) takes, to give a concurrent call the chance to run meanwhile.
    """

    def __init__(self, selinux: bool = False):
        self.selinux = selinux
        self.table: list[Mount] = []
        self.loops: dict[str, str] = {}  # image -> /dev/loopN
        self.calls: list[tuple] = []
        self.fail_next: Exception | None = None
        self.read_only_filesystems: set[str] = set()
        self.mount_seconds = 0.0
        self._next_id = 1000
        self._next_loop = 0

    # ---- the table -------------------------------------------------------------------------------------

    def mounts(self) -> list[Mount]:
        return list(self.table)

    def mounted_at(self, path: str, table: list[Mount] | None = None) -> Mount | None:
        found = [m for m in (self.table if table is None else table) if m.mount_point == path]
        return found[-1] if found else None

    def open_top(self, place) -> tuple[int | None, Mount | None]:
        child = place.open()
        if child is None:
            return None, None
        return child, self.mounted_at(_real(child))

    def top_mount(self, place) -> Mount | None:
        child, entry = self.open_top(place)
        if child is not None:
            os.close(child)
        return entry

    def open_root_of(self, place, entry: Mount) -> int:
        child, now = self.open_top(place)
        if now is None or now.mount_id != entry.mount_id:
            if child is not None:
                os.close(child)
            raise MountFailed(f"{place.field} {place.given}: the mount there changed during the call")
        return child

    def open_writable_view(self, root: int, entry: Mount) -> int | None:
        return None  # the fake's mounts are its own table: no second view of a directory to reach

    def writable(self, path: str | int) -> bool:
        entry = self.mounted_at(_real(path))
        return entry is None or not entry.read_only

    def statvfs_usage(self, path: str) -> tuple[int, int, int, int, int, int]:
        return 1 << 20, 1 << 24, (1 << 24) - (1 << 20), 100, 1000, 900

    # ---- mount(2) and umount(2) ------------------------------------------------------------------------

    def _add(self, number: str, source: str, target: str, fs_type: str, options: tuple, supers: tuple) -> None:
        self._next_id += 1
        self.table.append(Mount(mount_id=self._next_id, parent_id=1, major_minor=number, root="/",
                                mount_point=target, mount_options=options, optional_fields=(), fstype=fs_type,
                                source=source, super_options=supers))

    def mount_filesystem(self, source: str, target: str, fs_type: str, flags: int, data: str,
                         context_flag: str | None) -> bool:
        self.calls.append(("mount", source, _real(target), fs_type, flags, data))
        time.sleep(self.mount_seconds)
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        kept = context_flag is not None and self.selinux
        supers = tuple(o for o in split_options(data or "") if kept or o != context_flag)
        read_only = fs_type in self.read_only_filesystems or flags & MS_RDONLY
        self._add(self.device_number(source), source, _real(target), fs_type, ("ro" if read_only else "rw",),
                  ("ro" if read_only else "rw",) + supers)
        return kept

    def mount(self, source: str, target: str, fs_type: str | None, flags: int, data: str | None) -> None:
        self.calls.append(("remount" if flags & MS_REMOUNT else "bind", _real(source), _real(target), flags))
        if flags & MS_REMOUNT:
            entry = self.mounted_at(_real(target))
            shown = ("ro" if flags & MS_RDONLY else "rw",) + entry.mount_options[1:]
            self.table[self.table.index(entry)] = dataclasses.replace(entry, mount_options=shown)
            return
        assert flags & MS_BIND, "the handlers mount filesystems through mount_filesystem"
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        source_entry = self.mounted_at(_real(source))
        if source_entry is None:
            raise MountFailed(f"mount {source}: {os.strerror(errno.ENOENT)}", errno=errno.ENOENT)
        self._add(source_entry.major_minor, source_entry.source, _real(target), source_entry.fstype,
                  source_entry.mount_options, source_entry.super_options)

    def remove_top(self, path: str) -> bool:
        """umount(2) of the topmost mount at `path`; also what a fake backend plugin unmounts with."""
        entry = self.mounted_at(path)
        if entry is None:
            return False
        self.table.remove(entry)
        return True

    def unmount_place(self, place) -> bool:
        self.calls.append(("umount", place.path))
        return self.remove_top(os.path.join(_real(place.parent), place.name))

    def undo_mount(self, directory_fd: int) -> None:
        self.calls.append(("undo", _real(directory_fd)))
        self.remove_top(_real(directory_fd))

    def refuse_shared_superblock(self, device: str, label, target: str) -> None:
        why = shared_superblock_conflict(self.table, self.device_number(device), label, target, self.selinux)
        if why:
            raise LabelConflict(why)

    # ---- loop devices ----------------------------------------------------------------------------------

    def find_loop(self, image: str) -> list[str]:
        return [self.loops[image]] if image in self.loops else []

    def attach_loop(self, image: str) -> str:
        if image not in self.loops:
            self.calls.append(("losetup", image))
            self.loops[image] = f"/dev/loop{self._next_loop}"
            self._next_loop += 1
        return self.loops[image]

    def detach_loop(self, device: str, settle: float = 30.0) -> None:
        self.calls.append(("detach", device))
        self.loops = {image: dev for image, dev in self.loops.items() if dev != device}

    def detach_image(self, image: str) -> None:
        for device in self.find_loop(image):
            self.detach_loop(device)

    def device_number(self, device: str) -> str:
        return f"{LOOP_MAJOR}:{int(device.removeprefix('/dev/loop'))}"

    # ---- given block devices: none on this fake node ----------------------------------------------------

    def block_device_number(self, device: str) -> str | None:
        return None

    def probe_device(self, device: str) -> dict[str, str]:
        return {}

    def make_filesystem(self, device_or_image: str, fs_type: str) -> None:
        self.calls.append(("mkfs", device_or_image, fs_type))


class FakeNode:
    """A node service over a FakeMounter, served on a unix socket with the shim's own error mapping, and a
    kubelet-like client for it. `serve(server)` (in subclasses) adds the service under test to the server."""

    VOLUME = "vol-1"

    def __init__(self, tmp_path, **config):
        self.config = shim_config(tmp_path, **config)
        self.fake = FakeMounter()
        self.state = State(self.config.state_file)
        self.root = KubeletRoot(self.config.kubelet_root)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[ErrorMapping()])
        self.serve(self.server)
        self.server.add_insecure_port(f"unix://{self.config.socket}")
        self.server.start()
        self.client = Client(self.config.socket, self.config.kubelet_root)
        self.staging = self.client.staging_path(self.VOLUME)

    def serve(self, server) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()
        self.server.stop(0)
        self.root.close()

    def __enter__(self) -> "FakeNode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def saved(self) -> dict:
        """The state as a restart would load it (snapshot plus journal)."""
        return State(self.config.state_file).plain()
