"""Per-volume state of the shim: one JSON file, written atomically, reconciled with mountinfo on start.

Every step that changes the node writes its intent first (`status: "pending"`) and its result after, so a
kill -9 anywhere leaves a record saying what may have happened. `reconcile` (pure) then compares the records
with /proc/self/mountinfo and the attached loop devices: a pending mount that exists stays pending (kubelet's
retry adopts it and runs the verification and relabel that may not have run), one that does not exist is
forgotten and its loop device detached, and a half-created volume image is removed. kubelet retries every
operation it did not see succeed, and each handler is idempotent, so the node converges with no duplicate
mounts and no leaked loop devices.

File layout (version 1):
  {"version": 1,
   "volumes":   {volume_id: {"name", "capacity_bytes", "fs_type", "image", "status"}},   # built-in driver
   "staged":    {volume_id: {"staging_path", "label", "mount_flags", "fs_type", "device", "status",
                              "verification"}},
   "published": {target_path: {"volume_id", "staging_path", "label", "readonly", "pod", "status",
                               "verification"}}}
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

VERSION = 1
PENDING = "pending"
DONE = "done"


def empty() -> dict:
    return {"version": VERSION, "volumes": {}, "staged": {}, "published": {}}


def write_atomically(path: str, data: dict) -> None:
    """tmp file + fsync + rename + fsync of the directory: readers see the old file or the new, never half."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class State:
    """The records and the file behind them. All access goes through `lock`; `commit()` saves."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.RLock()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.data = self._load()

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return empty()
        except (OSError, ValueError) as err:
            aside = f"{self.path}.corrupt.{int(time.time())}"
            log.error("state file %s unreadable (%s); moved to %s and rebuilt from mountinfo", self.path, err, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return empty()
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.error("state file %s has an unknown version; starting empty", self.path)
            return empty()
        for key in ("volumes", "staged", "published"):
            data.setdefault(key, {})
        return data

    @property
    def volumes(self) -> dict:
        return self.data["volumes"]

    @property
    def staged(self) -> dict:
        return self.data["staged"]

    @property
    def published(self) -> dict:
        return self.data["published"]

    def commit(self) -> None:
        with self.lock:
            write_atomically(self.path, self.data)

    @contextlib.contextmanager
    def change(self):
        """Modify records under the lock; the file is written when the block ends without an exception,
        and the records roll back to the last saved copy when it raises."""
        with self.lock:
            before = copy.deepcopy(self.data)
            try:
                yield self
            except BaseException:
                self.data = before
                raise
            if self.data != before:  # a repeated call that changes nothing costs no write
                self.commit()

    def publishers(self, volume_id: str) -> list[tuple[str, dict]]:
        with self.lock:
            return [(target, rec) for target, rec in self.published.items() if rec.get("volume_id") == volume_id]

    def volume_by_name(self, name: str) -> tuple[str, dict] | None:
        with self.lock:
            for volume_id, rec in self.volumes.items():
                if rec.get("name") == name:
                    return volume_id, rec
        return None


class VolumeLocks:
    """One lock per key (volume id or name): operations on one volume run one at a time, others in parallel."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def hold(self, key: str):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)


def reconcile(data: dict, mount_points: dict[str, str], loops: dict[str, str], image_dir: str):
    """Pure: bring the records in line with what the node shows after a restart.

    `mount_points`: mount point -> "major:minor" from mountinfo; `loops`: /dev/loopN -> (backing file,
    "major:minor");
    `image_dir`: where the built-in driver keeps volume images. Returns (new data, loop devices to detach,
    files to remove, notes for the log).
    """
    data = copy.deepcopy(data)
    notes, detach, remove = [], [], []

    for volume_id, rec in list(data["volumes"].items()):
        if rec.get("status") != DONE:
            # Created half-way: the CO saw no success and will call CreateVolume again with the same name.
            remove.extend([rec.get("image", ""), rec.get("image", "") + ".tmp"])
            del data["volumes"][volume_id]
            notes.append(f"volume {volume_id}: removed a half-created image")

    for target, rec in list(data["published"].items()):
        if target in mount_points:
            if rec.get("status") != DONE:
                # Mounted, but the verification or the relabel after it may not have run: stays pending, and
                # kubelet's retry (it saw no success) adopts the mount and finishes the work.
                notes.append(f"{target}: a publish was mounted but not finished; the retry completes it")
        else:
            del data["published"][target]
            if rec.get("status") == DONE:
                notes.append(f"{target}: forgot a publish that is no longer mounted")

    in_use = set(mount_points.values())
    for volume_id, rec in list(data["staged"].items()):
        path = rec.get("staging_path")
        if path in mount_points:
            if rec.get("status") != DONE:
                notes.append(f"volume {volume_id}: a stage was mounted but not finished; the retry completes it")
        else:
            del data["staged"][volume_id]
            notes.append(f"volume {volume_id}: forgot a stage that is not mounted at {path}")

    prefix = image_dir.rstrip("/") + "/"
    for device, (backing, number) in sorted(loops.items()):
        if not backing.startswith(prefix):
            continue  # not ours
        if number in in_use:
            continue
        detach.append(device)
        notes.append(f"{device}: detached a loop device for {backing} that nothing mounts")
    return data, detach, [path for path in remove if path], notes

