"""CSI Node service of the built-in driver: loop device + mount at the staging path, bind mount to targets.

NodeStageVolume mounts the volume's filesystem with the request's mount flags, the `context=` flag exactly
as kubelet sent it, through mount(2); NodePublishVolume bind-mounts the staging path to the target and honours
readonly with a remount. Each mount with a context is read back from /proc/self/mountinfo: where the context
did not take (a kernel without SELinux shows none), `--on-context-dropped` decides between the relabel walker
on the published path and FAILED_PRECONDITION. Conflicts between labels on one node are refused the way
kubelet words them.

Each handler runs: check the request (csi_shim/validate.py), open its paths and take the locks, plan
(csi_shim/plan.py), the label guard and the after-mount fallback shared with the proxy (csi_shim/publish.py),
and the kernel's part through the mounter it was given (csi_shim/mounter.py; tests without root give it a
stand-in with an in-memory mount table).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from agent.errors import (ContextNotApplied, InvalidInput, MountFailed, VolumeAlreadyExists, VolumeInUse,
                          VolumeNotFound)
from agent.node.mountinfo import Mount
from csi_shim import mounter as host_mounter
from csi_shim import validate
from csi_shim.config import ShimConfig
from csi_shim.fdpath import KubeletRoot, Place, proc_path
from csi_shim.locks import VolumeLocks, path_key, volume_key
from csi_shim.mounter import DROPPED, Verification, classify, mounted_here
from csi_shim.plan import (FAIL, MS_BIND, MS_REMOUNT, SUPPORTED_FS_TYPES, MountPlan, after_mount,
                           device_filesystem, dropped_hint, node_topology, plan_mount, pod_of)
from csi_shim.proto import csi_pb2, csi_pb2_grpc
from csi_shim.publish import check_publish_label, check_stage_label, finish_publish
from csi_shim.records import Published, Staged
from csi_shim.journal import State
from csi_shim.records import DONE, PENDING

log = logging.getLogger(__name__)


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, state: State, config: ShimConfig, locks: VolumeLocks, metrics=None,
                 root: KubeletRoot | None = None, mounter=host_mounter):
        """`mounter` does the kernel's part (mount(2), umount(2), loop devices, mountinfo): csi_shim.mounter,
        or a stand-in with the same functions that lets the handler sequences run without root."""
        self.mounter = mounter
        self.metrics = metrics
        self.state = state
        self.config = config
        self.locks = locks
        self.root = root or KubeletRoot(config.kubelet_root)

    # ---- information ---------------------------------------------------------------------------------------

    def NodeGetInfo(self, request, context):
        # The topology segment is what external-provisioner turns into each PV's node affinity.
        topology = csi_pb2.Topology(segments=node_topology(self.config.driver_name, self.config.node_id))
        return csi_pb2.NodeGetInfoResponse(node_id=self.config.node_id, accessible_topology=topology)

    def NodeGetCapabilities(self, request, context):
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=rpc(type=kind))
            for kind in (rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_MOUNT_GROUP)])

    def _volume(self, volume_id: str) -> dict:
        record = self.state.volumes.get(volume_id)
        if record is None or record.get("status") != DONE:
            raise VolumeNotFound(f"volume {volume_id} does not exist")
        return record

    def _numbers(self, volume: dict) -> set[str]:
        """Device numbers ("major:minor") a mount of this volume shows in mountinfo: its loop devices, or the
        given block device (as recorded, and as its path resolves now)."""
        if volume.get("device"):
            return {n for n in (self.mounter.block_device_number(volume["device"]), volume.get("device_number"))
                    if n}
        return {self.mounter.device_number(dev) for dev in self.mounter.find_loop(volume["image"])}

    def _confirm_mount(self, place: Place, numbers: set[str]) -> Mount:
        """The mount just made on the directory opened at `place`, checked to be where the CO named it: the
        directory there now is the root of a mount of one of `numbers`, listed in mountinfo at that path. A
        rename during the call moves the directory, and its mount, to another name; that is refused (the caller
        undoes the mount through the directory's descriptor)."""
        entry = self.mounter.top_mount(place)
        if entry is None or entry.major_minor not in numbers or not mounted_here(place, entry):
            where = f"it is at {entry.mount_point}" if entry is not None else "nothing is mounted there"
            raise MountFailed(f"{place.field} {place.given}: a component of the path was renamed or replaced during "
                              f"the call and the mount did not stay at that path ({where}); the mount was undone")
        return entry

    def _unmount_ours(self, place: Place, numbers: set[str]) -> Mount | None:
        """Unmount this volume's mounts at `place` (its devices `numbers`, possibly stacked after a crash), each
        through the open parent directory; returns what is mounted there afterwards (None: nothing). A mount of
        ours that mountinfo lists under another path means a component was renamed since it was made: nothing is
        unmounted through a swapped path, and kubelet retries."""
        while (top := self.mounter.top_mount(place)) is not None and top.major_minor in numbers:
            if not mounted_here(place, top):
                raise VolumeInUse(f"{place.field} {place.given} is not where this volume was mounted: a component of "
                                  f"the path was renamed (the mount is at {top.mount_point}); nothing was unmounted")
            self.mounter.unmount_place(place)
        return top

    # ---- stage -----------------------------------------------------------------------------------------------

    def _place(self, path: str, field: str, missing: str | None) -> Place | None:
        """`path` opened beneath the kubelet root; with a missing parent directory: InvalidInput(`missing`),
        or None when `missing` is None (nothing can be mounted there)."""
        try:
            return self.root.place(path, field)
        except FileNotFoundError:
            if missing is None:
                return None
            raise InvalidInput(missing) from None

    @contextlib.contextmanager
    def _held_place(self, given_path: str, field: str, volume_id: str):
        """For unstage and unpublish: (the path as mountinfo lists it, the path opened beneath the root or
        None when its parent is gone, so nothing can be mounted there), with the volume's and the path's
        locks held."""
        resolved = self.root.resolved(given_path)
        with contextlib.ExitStack() as held:
            place = self._place(given_path, field, None)
            if place is not None:
                held.enter_context(place)
            held.enter_context(self.locks.hold(volume_key(volume_id), path_key(resolved)))
            yield resolved, place

    def NodeStageVolume(self, request, context):
        given_path = validate.node_stage(request, self.config.kubelet_root)
        given = validate.static_device(request.volume_context)
        not_a_directory = f"staging_target_path {given_path} is not a directory (the CO creates it)"
        with self._place(given_path, "staging_target_path", not_a_directory) as place, \
                self.locks.hold(volume_key(request.volume_id), path_key(place.path)):
            staging = place.path
            needs_format = False
            if given is None:
                volume = self._volume(request.volume_id)
            else:
                volume, needs_format = self._given_device(request.volume_id, given, request.volume_capability)
            plan = plan_mount(request.volume_capability, default_fs_type=volume["fs_type"],
                              fs_types=SUPPORTED_FS_TYPES)
            if plan.fs_type != volume["fs_type"]:
                raise InvalidInput(f"volume {request.volume_id} holds {volume['fs_type']}, not {plan.fs_type}")

            record = self.state.staged.get(request.volume_id)
            if record is not None and record.get("status") == DONE:
                check_stage_label(self.state, request.volume_id, plan.context)
                if record["staging_path"] != staging:
                    raise VolumeAlreadyExists(f"volume {request.volume_id} is already staged at "
                                              f"{record['staging_path']}")
                if list(plan.flags_without_context) != [f for f in record["mount_flags"]
                                                        if f.partition("=")[0] != "context"]:
                    raise VolumeAlreadyExists(f"volume {request.volume_id} is already staged at {staging} with "
                                              f"other mount flags")
                if self.mounter.top_mount(place) is not None:
                    return csi_pb2.NodeStageVolumeResponse()  # a repeat: already done
            if not place.is_directory():
                raise InvalidInput(not_a_directory)

            pending = Staged(staging_path=staging, label=plan.context.text if plan.context else None,
                             mount_flags=tuple(plan.mount_flags), fs_type=plan.fs_type, device=None,
                             status=PENDING, verification=None)
            with self.state.intent("staged", request.volume_id, pending) as done:
                verification, device = self._stage(request.volume_id, volume, place, plan, needs_format)
                done.update(device=device, verification=verification.status)
            log.info("staged volume %s at %s: %s", request.volume_id, staging, verification.describe())
            return csi_pb2.NodeStageVolumeResponse()

    def _given_device(self, volume_id: str, given: tuple[str, bool], capability) -> tuple[dict, bool]:
        """The volume record of a pre-provisioned volume on a given block device, saved (durably: it must
        outlive restarts, so that unpublish and unstage still know the volume), and whether to format it."""
        device, allow_format = given
        record = self.state.volumes.get(volume_id)
        if record is not None and not record.get("device"):
            raise InvalidInput(f"volume {volume_id} is a volume this driver created; volume_context "
                               f"{validate.DEVICE_KEY} applies to pre-provisioned volumes only")
        staged = self.state.staged.get(volume_id)
        if staged is not None and staged.get("status") == DONE and record is not None \
                and record["device"] != device:
            raise VolumeAlreadyExists(f"volume {volume_id} is already staged from device {record['device']}, "
                                      f"not {device}")
        number = self.mounter.block_device_number(device)
        if number is None:
            raise InvalidInput(f"volume_context {validate.DEVICE_KEY} {device!r} is not a block device")
        fs_type, needs_format = device_filesystem(self.mounter.probe_device(device), device,
                                                  capability.mount.fs_type, allow_format)
        wanted = {"device": device, "device_number": number, "fs_type": fs_type, "status": DONE}
        with self.state.change():
            self.state.volumes[volume_id] = wanted  # journals (and fsyncs) only when it differs
        return wanted, needs_format

    def _refuse_device_in_use(self, volume_id: str, device: str, number: str, staging: str) -> None:
        """A given device in use anywhere but at this volume's own paths (mounted in any mount namespace, held
        by a stacked device, opened exclusively) is someone else's: sharing its superblock would hand a pod
        whatever the host keeps there."""
        from csi_shim.device_use import device_use, in_use_problem

        ours = {staging} | {target for target, _ in self.state.publishers(volume_id)}
        try:
            use = device_use(device, number, self.mounter.mounts())
        except OSError as err:
            raise VolumeInUse(f"volume {volume_id}: cannot tell whether device {device} is in use: it does not "
                              f"open ({err.strerror})") from None
        problem = in_use_problem(use, ours)
        if problem:
            raise VolumeInUse(f"volume {volume_id}: {problem}")

    def _stage(self, volume_id: str, volume: dict, place: Place, plan: MountPlan,
               needs_format: bool = False) -> tuple[Verification, str]:
        """Mount the volume on the staging directory opened beneath the kubelet root, never on a path name;
        then confirm it is at the path the CO named."""
        staging = place.path
        given = bool(volume.get("device"))
        if given:
            attached, device = False, volume["device"]
        else:
            attached = not self.mounter.find_loop(volume["image"])
            device = self.mounter.attach_loop(volume["image"])
        mounted = made = False  # mounted by this call, or adopted from one that was killed before it finished
        directory = None  # the staging directory, opened beneath the root, that this call mounts on
        try:
            number = self.mounter.device_number(device)
            existing = self.mounter.top_mount(place)
            if existing is not None and existing.major_minor != number:
                raise VolumeAlreadyExists(f"{staging} already holds another mount ({existing.source})")
            if existing is None:
                if given:
                    self._refuse_device_in_use(volume_id, device, number, staging)
                    if needs_format:
                        log.warning("volume %s: formatting the blank device %s as %s (volume_context %s: true)",
                                    volume_id, device, plan.fs_type, validate.FORMAT_KEY)
                        self.mounter.make_filesystem(device, plan.fs_type)
                self.mounter.refuse_shared_superblock(device, plan.context, staging)
                bits, data = plan.syscall()
                directory = place.open()
                if directory is None:
                    raise InvalidInput(f"staging_target_path {place.given} is gone (the CO creates it)")
                self.mounter.mount_filesystem(device, proc_path(directory), plan.fs_type, bits, data,
                                              plan.context_flag)
                made = True
            mounted = True
            entry = self._confirm_mount(place, {number})
            verification = classify(entry, plan.context, staging)
            # At stage time only a failure counts; a dropped context is relabelled after publish, which a
            # read-only filesystem (reader-only access mode) cannot take, so that fails here already.
            writable = self._writable(place) if verification.status == DROPPED else True
            if after_mount(verification.status, self.config.on_context_dropped, plan.context, None,
                           writable) == FAIL:
                hint = "" if writable else dropped_hint(self.config.on_context_dropped, writable)
                raise ContextNotApplied(f"volume staged at {staging}: {verification.describe()}{hint}")
            return verification, device
        except BaseException:
            # A failed stage leaves nothing mounted, adopted mounts included: the record is dropped below, and a
            # mount nobody records would outlive the volume's use.
            if made:
                self.mounter.undo_mount(directory)
            elif mounted:
                with contextlib.suppress(Exception):
                    self._unmount_ours(place, {number})
            if (attached or mounted) and not given:
                with contextlib.suppress(Exception):
                    self.mounter.detach_loop(device)
            raise
        finally:
            if directory is not None:
                os.close(directory)

    def _writable(self, place: Place) -> bool:
        child, _ = self.mounter.open_top(place)
        if child is None:
            return True
        try:
            return self.mounter.writable(proc_path(child))
        finally:
            os.close(child)

    def NodeUnstageVolume(self, request, context):
        given_path = validate.node_unstage(request, self.config.kubelet_root)
        with self._held_place(given_path, "staging_target_path", request.volume_id) as (staging, place):
            volume = self._volume(request.volume_id)
            published = [target for target, rec in self.state.publishers(request.volume_id)
                         if self.mounter.mounted_at(target) is not None]
            if published:
                raise VolumeInUse(f"volume {request.volume_id} is still published at {', '.join(published)}")
            record = self.state.staged.get(request.volume_id)
            if record is not None and record["staging_path"] != staging:
                raise VolumeNotFound(f"volume {request.volume_id} is staged at {record['staging_path']}, "
                                     f"not {staging}")
            # Unmount only what is ours: the volume's device, possibly stacked after a crash.
            numbers = self._numbers(volume)
            if place is not None:
                self._unmount_ours(place, numbers)
            if volume.get("image"):
                # The loop device is this volume's alone: mounted anywhere below the kubelet root, it is still
                # in use, and OK would leave that mount (and the loop under it) behind.
                self._refuse_loop_still_mounted(request.volume_id, numbers)
                self.mounter.detach_image(volume["image"])  # a given block device stays as it was found
            if record is not None:
                with self.state.change():
                    self.state.staged.pop(request.volume_id, None)
            log.info("unstaged volume %s from %s", request.volume_id, staging)
            return csi_pb2.NodeUnstageVolumeResponse()

    def _refuse_loop_still_mounted(self, volume_id: str, numbers: set[str]) -> None:
        below = self.root.real.rstrip("/") + "/"
        left = sorted(m.mount_point for m in self.mounter.mounts() if m.major_minor in numbers
                      and m.mount_point.startswith(below))
        if left:
            raise VolumeInUse(f"volume {volume_id} is still mounted at {', '.join(left)}; unpublish it there first")

    # ---- publish ---------------------------------------------------------------------------------------------

    def NodePublishVolume(self, request, context):
        given_target, given_staging = validate.node_publish(request, self.config.kubelet_root)
        staging_place, target_place = self._publish_places(given_staging, given_target)
        staging, target = staging_place.path, target_place.path
        requester = pod_of(request.volume_context)
        with staging_place, target_place, \
                self.locks.hold(volume_key(request.volume_id), path_key(staging), path_key(target)):
            volume = self._volume(request.volume_id)
            plan = plan_mount(request.volume_capability, readonly=request.readonly,
                              default_fs_type=volume["fs_type"], fs_types=SUPPORTED_FS_TYPES)
            staged = self.state.staged.get(request.volume_id)
            if staged is None or staged.get("status") != DONE:
                raise VolumeInUse(f"volume {request.volume_id} is not staged (NodeStageVolume first)")
            if staged["staging_path"] != staging:
                raise VolumeInUse(f"volume {request.volume_id} is staged at {staged['staging_path']}, "
                                  f"not {staging}")
            check_publish_label(self.state, request.volume_id, plan.context, requester)

            record = self.state.published.get(target)
            if record is not None and record.get("status") == DONE \
                    and self.mounter.top_mount(target_place) is not None:
                if (record["volume_id"], record["readonly"], record["mount_flags"]) != (
                        request.volume_id, plan.readonly, list(plan.mount_flags)):
                    raise VolumeAlreadyExists(f"{target} is already published with other arguments "
                                              f"(volume {record['volume_id']}, readonly={record['readonly']})")
                return csi_pb2.NodePublishVolumeResponse()  # a repeat: already done

            pending = Published(volume_id=request.volume_id, staging_path=staging,
                                label=plan.context.text if plan.context else None, readonly=plan.readonly,
                                mount_flags=tuple(plan.mount_flags), pod=tuple(requester) if requester else None,
                                status=PENDING, verification=None, action=None)
            with self.state.intent("published", target, pending) as done:
                verification, action = self._publish(staging_place, target_place, plan, request.volume_id)
                done.update(verification=verification.status, action=action)
            log.info("published volume %s at %s (readonly=%s): %s%s", request.volume_id, target, plan.readonly,
                     verification.describe(), f"; {action}" if action != "nothing" else "")
            return csi_pb2.NodePublishVolumeResponse()

    def _publish_places(self, given_staging: str, given_target: str) -> tuple[Place, Place]:
        """Both paths opened beneath the kubelet root, and checked not to overlap."""
        with contextlib.ExitStack() as opened:
            staging = opened.enter_context(self._place(
                given_staging, "staging_target_path",
                f"staging_target_path {given_staging}: its parent directory does not exist"))
            target = opened.enter_context(self._place(
                given_target, "target_path", f"the parent directory of target_path {given_target} does not exist"))
            validate.no_overlap(target.path, staging.path)
            opened.pop_all()
            return staging, target

    def _publish(self, staging_place: Place, target_place: Place, plan: MountPlan, volume_id: str):
        """Bind the staging mount (opened beneath the kubelet root) onto the target directory, created here
        with mkdirat in its opened parent and then opened itself: no path name is followed in between."""
        target = target_place.path
        created = False
        try:
            os.mkdir(target_place.name, 0o750, dir_fd=target_place.parent)
            created = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise InvalidInput(f"the parent directory of target_path {target_place.given} does not exist") from None
        with contextlib.ExitStack() as opened:
            try:
                directory = target_place.open()
            except InvalidInput:
                raise InvalidInput(f"target_path {target_place.given} exists and is not a directory") from None
            if directory is None:
                raise InvalidInput(f"the parent directory of target_path {target_place.given} does not exist")
            opened.callback(os.close, directory)
            source_fd, source = self.mounter.open_top(staging_place)
            if source_fd is not None:
                opened.callback(os.close, source_fd)
            if source is None or not mounted_here(staging_place, source):
                raise VolumeInUse(f"volume {volume_id} is not mounted at {staging_place.path}; stage it again")
            return self._bind(source_fd, source, directory, target_place, plan, volume_id, created)

    def _bind(self, source_fd: int, source: Mount, directory: int, target_place: Place, plan: MountPlan,
              volume_id: str, created: bool):
        target = target_place.path
        existing = self.mounter.top_mount(target_place)
        mounted = made = False
        try:
            if existing is not None and existing.major_minor != source.major_minor:
                raise VolumeAlreadyExists(f"{target} already holds another mount ({existing.source})")
            if existing is None:
                self.mounter.mount(proc_path(source_fd), proc_path(directory), None, MS_BIND, None)
                made = True
            mounted = True
            entry = self._confirm_mount(target_place, {source.major_minor})
            verification = classify(entry, plan.context, target)
            # The relabel or fsGroup pass and the remount start from the confirmed mount's root, not its name.
            root = self.mounter.open_root_of(target_place, entry)
            try:
                action = finish_publish(root, verification, plan, self.config, volume_id, self.metrics,
                                        self.mounter)
                flags = plan.bind_flags()
                if flags:
                    self.mounter.mount("none", proc_path(root), None, MS_BIND | MS_REMOUNT | flags, None)
            finally:
                os.close(root)  # before any undo below: an open descriptor keeps the mount busy
            return verification, action
        except BaseException:
            if made:
                self.mounter.undo_mount(directory)
            elif mounted:
                with contextlib.suppress(Exception):
                    self._unmount_ours(target_place, {source.major_minor})
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(target_place.name, dir_fd=target_place.parent)
            raise

    def NodeUnpublishVolume(self, request, context):
        """Unmounts only this volume's own mounts at the target (its device in mountinfo). A target where the
        volume is not mounted is already unpublished (CSI: "MUST reply 0 OK"), so a mount someone else made
        there is left alone and the call succeeds; only when that foreign mount covers one of ours, which
        cannot be unmounted without removing it, the call fails and kubelet keeps retrying."""
        given_path = validate.node_unpublish(request, self.config.kubelet_root)
        with self._held_place(given_path, "target_path", request.volume_id) as (target, place):
            volume = self._volume(request.volume_id)
            record = self.state.published.get(target)
            if record is not None and record["volume_id"] != request.volume_id:
                raise VolumeNotFound(f"{target} holds volume {record['volume_id']}, not {request.volume_id}")
            numbers = self._numbers(volume)
            top = self._unmount_ours(place, numbers) if place is not None else None
            if top is not None:
                if any(m.mount_point == target and m.major_minor in numbers for m in self.mounter.mounts()):
                    raise VolumeInUse(f"volume {request.volume_id} is mounted at {target} under a mount this "
                                      f"driver did not make ({top.source}, {top.fstype}); unmount that first")
                log.warning("%s holds a mount this driver did not make (%s, %s, device %s); left in place",
                            target, top.source, top.fstype, top.major_minor)
            elif place is not None:
                try:
                    os.rmdir(place.name, dir_fd=place.parent)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    if err.errno == errno.ENOTDIR:
                        raise InvalidInput(f"target_path {given_path} is not a directory") from None
                    if err.errno != errno.ENOTEMPTY:
                        raise
                    log.warning("%s is not empty after unmount; left in place", target)
            if record is not None:
                with self.state.change():
                    self.state.published.pop(target, None)
            log.info("unpublished volume %s from %s", request.volume_id, target)
            return csi_pb2.NodeUnpublishVolumeResponse()

    # ---- stats -----------------------------------------------------------------------------------------------

    def NodeGetVolumeStats(self, request, context):
        path = validate.node_get_volume_stats(request, self.config.kubelet_root)[0]
        self._volume(request.volume_id)
        self.root.check_volume_path(path, "volume_path")
        place = self.root.volume_place(path, "volume_path")
        if place is None:
            raise VolumeNotFound(f"volume {request.volume_id} is not mounted at {request.volume_path}")
        with place:
            path = place.path
            record = self.state.published.get(path)
            staged = self.state.staged.get(request.volume_id)
            ours = (record is not None and record["volume_id"] == request.volume_id) or (
                staged is not None and staged["staging_path"] == path)
            child, entry = self.mounter.open_top(place) if ours else (None, None)
            try:
                if entry is None or not mounted_here(place, entry):
                    raise VolumeNotFound(f"volume {request.volume_id} is not mounted at {request.volume_path}")
                usage = self.mounter.statvfs_usage(proc_path(child))
            finally:
                if child is not None:
                    os.close(child)
        available, total, used, inodes_free, inodes, inodes_used = usage
        unit = csi_pb2.VolumeUsage
        return csi_pb2.NodeGetVolumeStatsResponse(usage=[
            unit(available=available, total=total, used=used, unit=unit.BYTES),
            unit(available=inodes_free, total=inodes, used=inodes_used, unit=unit.INODES)])
