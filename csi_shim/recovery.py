"""After a (re)start: the records brought in line with the node, and, on request, rebuilt from the node.

`reconcile` (pure) runs on every start. It compares the records with /proc/self/mountinfo and the attached
loop devices: a pending mount that exists stays pending (kubelet's retry adopts it and runs the verification
and relabel that may not have run), one that does not exist is forgotten and its loop device detached, and a
half-created volume image is removed. kubelet retries every operation it did not see succeed, and each
handler is idempotent, so the node converges with no duplicate mounts and no leaked loop devices.

`rebuild` (pure) is what `csi --recover-state` writes when the state files cannot be loaded: the built-in
driver's volumes from their images, their stages and publishes from the mounts of their loop devices under
the kubelet root (kubelet's layout: publishes below pods/, the stage elsewhere). It says what it could not
know: volume names, pod names, flags that leave no trace in mountinfo, and given block devices, which look
like any other driver's volume.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import stat
import time

from agent.errors import AgentError, MountFailed, StateInvalid
from agent.label import context_mount_option
from agent.node.mountinfo import Mount
from csi_shim import mounter
from csi_shim.fdpath import KubeletRoot
from csi_shim.journal import SNAPSHOT, JOURNAL_NAME, State, empty
from csi_shim.plan import SUPPORTED_FS_TYPES
from csi_shim.records import DONE, ImageVolume, Published, Staged

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".img"
# Per-mount flags mountinfo shows when they were asked for (proc(5) "mount options"); rw, ro and relatime
# are the defaults or, for ro, the publish's readonly, and are not flags anyone listed.
MOUNTINFO_FLAGS = ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "strictatime", "nosymfollow")
# kubelet's directory layout (pkg/volume/csi): targets live below pods/<uid>/volumes/kubernetes.io~csi/.
PODS = "pods"
CSI_PLUGIN_DIR = "plugins/kubernetes.io/csi"
CSI_POD_VOLUMES = "/volumes/kubernetes.io~csi/"


def reconcile(data: dict, mount_points: dict[str, str], loops: dict[str, tuple[str, str]], image_dir: str):
    """Pure: bring the records in line with what the node shows after a restart.

    `mount_points`: mount point -> "major:minor" from mountinfo; `loops`: /dev/loopN -> (backing file,
    "major:minor"); `image_dir`: where the built-in driver keeps volume images. Returns (new data, loop devices
    to detach, files to remove, empty directories to remove, notes for the log).
    """
    data = copy.deepcopy(data)
    notes, detach, remove, rmdirs = [], [], [], []

    for volume_id, rec in list(data["volumes"].items()):
        if rec.get("device"):
            continue  # a given block device: nothing half-made to remove, never a loop device to detach
        if rec["status"] != DONE:
            # Created half-way: the CO saw no success and will call CreateVolume again with the same name.
            remove.extend([rec["image"], rec["image"] + ".tmp"])
            del data["volumes"][volume_id]
            notes.append(f"volume {volume_id}: removed a half-created image")

    for target, rec in list(data["published"].items()):
        if target in mount_points:
            if rec["status"] != DONE:
                # Mounted, but the verification or the relabel after it may not have run: stays pending, and
                # kubelet's retry (it saw no success) adopts the mount and finishes the work.
                notes.append(f"{target}: a publish was mounted but not finished; the retry completes it")
        else:
            del data["published"][target]
            if rec["status"] == DONE:
                notes.append(f"{target}: forgot a publish that is no longer mounted")
            else:
                # Killed between creating the target directory and mounting on it: the directory goes too
                # (only if empty), so a pod that is gone by now leaves nothing behind.
                rmdirs.append(target)
                notes.append(f"{target}: forgot a publish that never mounted; its empty directory is removed")

    in_use = set(mount_points.values())
    for volume_id, rec in list(data["staged"].items()):
        path = rec["staging_path"]
        if path in mount_points:
            if rec["status"] != DONE:
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
    return data, detach, remove, rmdirs, notes


def image_files(image_dir: str) -> list[str]:
    """Volume images (regular files named <volume id>.img) in the image directory, sorted."""
    try:
        names = os.listdir(image_dir)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(image_dir, n) for n in names
                  if n.endswith(IMAGE_SUFFIX) and stat.S_ISREG(os.lstat(os.path.join(image_dir, n)).st_mode))


def refuse_forgetting(state: State, image_dir: str) -> None:
    """No state at all is a fresh node, unless volume images are there: then the state was deleted, and an
    empty start would answer DeleteVolume with OK and leave every image and its mounts behind."""
    images = image_files(image_dir) if state.fresh else []
    if images:
        raise StateInvalid(state.path, f"is missing while {image_dir} holds {len(images)} volume image(s) "
                                       f"({os.path.basename(images[0])}...); the state was deleted")


def recover(state: State, config, root: KubeletRoot | None = None) -> list[str]:
    """Reconcile the records with mountinfo and loop devices after a (re)start; returns what changed. `root`:
    the kubelet root held open (one is opened for the call when None)."""
    if root is None:
        root = KubeletRoot(config.kubelet_root)
        try:
            return recover(state, config, root)
        finally:
            root.close()
    refuse_forgetting(state, config.image_dir)
    mount_points = {m.mount_point: m.major_minor for m in mounter.mounts()}
    with state.lock:
        data, detach, remove, rmdirs, notes = reconcile(state.plain(), mount_points, mounter.loop_devices(),
                                                        config.image_dir)
        for device in detach:
            try:
                mounter.detach_loop(device)
            except AgentError as err:
                notes.append(f"{device}: could not detach: {err}")
        for path in remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for path in rmdirs:
            try:
                # Through the parent opened beneath the root: a renamed component cannot point it elsewhere.
                with root.place(path, "target_path") as place:
                    os.rmdir(place.name, dir_fd=place.parent)
            except FileNotFoundError:
                pass
            except OSError as err:
                notes.append(f"{path}: left in place: {err.strerror}")
            except AgentError as err:
                notes.append(f"{path}: left in place: {err}")
        state.replace(data)
        recorded = {rec.get("image") for rec in data["volumes"].values()}
        for image in image_files(config.image_dir):
            if image not in recorded:
                notes.append(f"{image}: a volume image no record names; kept (csi --recover-state adopts it)")
    for note in notes:
        log.warning("recovery: %s", note)
    return notes


# ---- --recover-state ----------------------------------------------------------------------------------------

def flags_of(entry: Mount) -> list[str]:
    """The mount flags a mount shows in mountinfo that someone asked for (defaults left out), `context=` last
    as kubelet appends it. Options that leave no trace in mountinfo cannot be known."""
    flags = [o for o in entry.mount_options if o in MOUNTINFO_FLAGS]
    if entry.context is not None:
        flags.append(context_mount_option(entry.context))
    return flags


def _verification(entry: Mount) -> str:
    return mounter.APPLIED if entry.context is not None else mounter.NO_CONTEXT


def kubelet_csi_mount(point: str, root: str) -> bool:
    """A mount point where kubelet puts CSI volumes: a staging path or a CSI publish target."""
    relative = point[len(root) + 1:] if point.startswith(root + "/") else None
    return relative is not None and (relative.startswith(CSI_PLUGIN_DIR + "/") or
                                     (relative.startswith(PODS + "/") and CSI_POD_VOLUMES in relative))


def rebuild(images: dict[str, tuple[str, int, str | None]], loops: dict[str, tuple[str, str]],
            table: list[Mount], kubelet_root: str, image_dir: str) -> tuple[dict, list[str], list[str]]:
    """Pure: records for what the node shows. `images`: volume id -> (image path, size, filesystem type
    found by blkid or None); `loops`: /dev/loopN -> (backing file, "major:minor"), backing files spelled as
    the image paths are; `table`: mountinfo. Returns (data, what was rebuilt, what could not be)."""
    data, rebuilt, unknown = empty(), [], []
    root = kubelet_root.rstrip("/")
    ours: set[str] = set()
    for volume_id, (image, size, fs_type) in sorted(images.items()):
        devices = {number: device for device, (backing, number) in sorted(loops.items()) if backing == image}
        if fs_type not in SUPPORTED_FS_TYPES or size <= 0:
            unknown.append(f"{image}: holds {fs_type or 'no filesystem blkid knows'}, not "
                           f"{' or '.join(SUPPORTED_FS_TYPES)}; left in place, not recorded")
            continue
        ours.update(devices)
        data["volumes"][volume_id] = ImageVolume(name="", capacity_bytes=size, fs_type=fs_type, image=image,
                                                 status=DONE).to_json()
        rebuilt.append(f"volume {volume_id}: {image}, {size} bytes of {fs_type}; its name is unknown (a "
                       f"CreateVolume repeating the old name makes a new volume)")
        found = [m for m in table if m.major_minor in devices and m.mount_point.startswith(root + "/")]
        publishes = [m for m in found if m.mount_point.startswith(f"{root}/{PODS}/")]
        stages = [m for m in found if m not in publishes]
        staging = stages[0] if stages else None
        if staging is not None:
            data["staged"][volume_id] = Staged(
                staging_path=staging.mount_point, label=staging.context.text if staging.context else None,
                mount_flags=tuple(flags_of(staging)), fs_type=fs_type, device=devices[staging.major_minor],
                status=DONE, verification=_verification(staging)).to_json()
            rebuilt.append(f"staged {volume_id} at {staging.mount_point} ({devices[staging.major_minor]}, "
                           f"flags {flags_of(staging) or 'none'} as mountinfo shows them)")
        for extra in stages[1:]:
            unknown.append(f"{extra.mount_point}: a second mount of volume {volume_id} outside pods/; not recorded")
        for entry in publishes:
            data["published"][entry.mount_point] = Published(
                volume_id=volume_id, staging_path=staging.mount_point if staging else None,
                label=entry.context.text if entry.context else None, readonly=entry.read_only,
                mount_flags=tuple(flags_of(entry)), pod=None, status=DONE,
                verification=_verification(entry), action=None).to_json()
            rebuilt.append(f"published {volume_id} at {entry.mount_point} (readonly={entry.read_only}); its pod "
                           f"is unknown")
    known = {image for image, _, _ in images.values()}
    for device, (backing, _) in sorted(loops.items()):
        if backing.startswith(image_dir.rstrip("/") + "/") and backing not in known:
            unknown.append(f"{device}: backs {backing}, which is not a volume image here (deleted?); not "
                           f"recorded")
    for entry in table:
        if entry.major_minor not in ours and not entry.major_minor.startswith("0:") and \
                kubelet_csi_mount(entry.mount_point, root):
            unknown.append(f"{entry.mount_point}: device {entry.major_minor} ({entry.source}) is not a loop device "
                           f"of this driver's images; a given block device cannot be told from another driver's "
                           f"volume, so it is not recorded (kubelet's next NodeStageVolume with volume_context "
                           f"device records it again)")
    return data, rebuilt, unknown


def set_aside(directory: str) -> list[str]:
    """Rename every state file (snapshot, journals, leftovers of an atomic write) to <name>.bad-<time>: kept
    for whoever wants to look, never deleted, and no longer found by the loader."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for name in sorted(os.listdir(directory)):
        if not (name == SNAPSHOT or JOURNAL_NAME.fullmatch(name) or name.startswith(SNAPSHOT + ".tmp.")):
            continue
        aside, counter = f"{name}.bad-{stamp}", 1
        while os.path.lexists(os.path.join(directory, aside)):
            aside, counter = f"{name}.bad-{stamp}-{counter}", counter + 1
        os.rename(os.path.join(directory, name), os.path.join(directory, aside))
        moved.append(f"{name} -> {aside}")
    return moved


def probe_images(image_dir: str) -> dict[str, tuple[str, int, str | None]]:
    out = {}
    for image in image_files(image_dir):
        try:
            fs_type = mounter.probe_device(image).get("TYPE")
        except MountFailed as err:
            raise StateInvalid(image, f"cannot be probed: {err}") from None
        out[os.path.basename(image)[:-len(IMAGE_SUFFIX)]] = (image, os.stat(image).st_size, fs_type)
    return out


def recover_state(config) -> list[str]:
    """`csi --recover-state`: when the state cannot be loaded, set its files aside and write the state that
    `rebuild` makes from this node. Returns the report, one line per finding; a state that loads is left
    alone."""
    try:
        state = State(config.state_file)
        try:
            refuse_forgetting(state, config.image_dir)
        finally:
            state.close()
        return [f"{config.state_file} loads; nothing to recover (the state is left as it is)"]
    except StateInvalid as err:
        report = [f"state not loadable: {err.path}: {err.why}"]
    report += [f"kept aside: {line}" for line in set_aside(config.state_dir)]
    # The kernel reports backing files by their real path; records spell images as the controller does.
    real = os.path.realpath(config.image_dir).rstrip("/") + "/"
    loops = {device: (config.image_dir.rstrip("/") + "/" + backing[len(real):] if backing.startswith(real)
                      else backing, number) for device, (backing, number) in mounter.loop_devices().items()}
    data, rebuilt, unknown = rebuild(probe_images(config.image_dir), loops, mounter.mounts(),
                                     os.path.realpath(config.kubelet_root), config.image_dir)
    if config.proxy:
        unknown.append("proxy mode: the labels of the backend's staged and published volumes are not on the "
                       "node; the next NodeStageVolume and NodePublishVolume record them again")
    state = State(config.state_file)
    try:
        state.replace(data)
    finally:
        state.close()
    report += [f"rebuilt: {line}" for line in rebuilt] or ["rebuilt: nothing (no volume images)"]
    report += [f"not rebuilt: {line}" for line in unknown]
    report.append(f"wrote {config.state_file}; start the shim as usual")
    return report
