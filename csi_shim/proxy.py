"""Proxy mode: the shim sits between kubelet and another CSI node plugin and makes `context=` trustworthy.

Every call is forwarded to `--backend-endpoint` as raw bytes (fields this file does not know survive). The
four calls that mount or unmount get the shim's own checks around the forward:

  before: paths below --kubelet-root, opened beneath it with no symlink followed (csi_shim.fdpath: the
          backend's mount(2) would follow one out of the root), the `context=` label
          parses, and the label agrees with the one the volume is already staged with on this node
          (kubelet's conflict text); with --strip-context the flag is removed before forwarding, for
          backends that refuse it;
  after:  the mount at the staging path / target (found through the opened directory, and confirmed to be
          listed at the path the CO named) is read back from /proc/self/mountinfo and the context
          compared canonically. A dropped context (mount(8) in the plugin's container, a FUSE or network
          filesystem without context support, --strip-context) falls back to the relabel walker on the
          published path (a read-only publish through the writable staging mount, or else through a writable
          mount of the same directory, as for a driver's read-only bind of a directory), or fails with
          FAILED_PRECONDITION (--on-context-dropped=fail); a different context
          always fails, and the backend's mount is rolled back so kubelet retries from a clean state.

NodeExpandVolume and NodeGetVolumeStats carry paths as well (volume_path, staging_target_path); they get the
same path checks and are otherwise forwarded untouched. A path outside the kubelet root, or through a symlink
below it, answers NOT_FOUND (no volume of this node can be there), so nothing outside the root reaches the
backend. Each call holds the locks of its volume and of its paths (csi_shim.locks).
"""

from __future__ import annotations

import contextlib
import logging
import os

import grpc

from agent.errors import BackendError, ContextNotApplied
from agent.node.mountinfo import Mount
from agent.node.system_paths import check_identity
from csi_shim import mounter as host_mounter
from csi_shim import validate
from csi_shim.config import ShimConfig, socket_path
from csi_shim.fdpath import KubeletRoot
from csi_shim.locks import VolumeLocks, path_key, volume_key
from csi_shim.mounter import DROPPED, NO_CONTEXT, NOT_MOUNTED, Verification, classify, mounted_here
from csi_shim.plan import FAIL, after_mount, plan_mount, pod_of, without_context
from csi_shim.proto import csi_pb2
from csi_shim.publish import check_publish_label, check_stage_label, finish_publish
from csi_shim.journal import State
from csi_shim.records import DONE

log = logging.getLogger(__name__)

NODE = "/csi.v1.Node/"
# Long enough for any real mount; kubelet's own deadline (2 min 3 s for mount operations) still applies.
_NO_DEADLINE = 24 * 3600.0


class Proxy(grpc.GenericRpcHandler):
    def __init__(self, config: ShimConfig, state: State, locks: VolumeLocks, metrics=None,
                 root: KubeletRoot | None = None, mounter=host_mounter):
        self.mounter = mounter  # mountinfo read through descriptors: csi_shim.mounter, or a stand-in in tests
        self.metrics = metrics
        self.config = config
        self.state = state
        self.locks = locks
        self.root = root or KubeletRoot(config.kubelet_root)
        self.channel = grpc.insecure_channel(f"unix://{socket_path(config.backend_endpoint, '--backend-endpoint')}")
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._hooks = {
            NODE + "NodeStageVolume": (csi_pb2.NodeStageVolumeRequest, self.stage),
            NODE + "NodeUnstageVolume": (csi_pb2.NodeUnstageVolumeRequest, self.unstage),
            NODE + "NodePublishVolume": (csi_pb2.NodePublishVolumeRequest, self.publish),
            NODE + "NodeUnpublishVolume": (csi_pb2.NodeUnpublishVolumeRequest, self.unpublish),
            NODE + "NodeExpandVolume": (csi_pb2.NodeExpandVolumeRequest, self.expand),
            NODE + "NodeGetVolumeStats": (csi_pb2.NodeGetVolumeStatsRequest, self.stats),
        }

    def close(self) -> None:
        self.channel.close()

    # ---- plumbing ----------------------------------------------------------------------------------------------

    def service(self, handler_call_details):
        method = handler_call_details.method
        hook = self._hooks.get(method)
        if hook is not None:
            message, function = hook
            return grpc.unary_unary_rpc_method_handler(function, request_deserializer=message.FromString)
        return grpc.unary_unary_rpc_method_handler(lambda payload, context: self.forward(method, payload, context))

    def forward(self, method: str, payload: bytes, context) -> bytes:
        """Send raw request bytes to the backend, return its raw response; its errors keep their code."""
        call = self._calls.get(method)
        if call is None:
            call = self._calls.setdefault(method, self.channel.unary_unary(method))
        remaining = context.time_remaining() if context is not None else None
        timeout = remaining if remaining is not None and remaining < _NO_DEADLINE else None
        try:
            return call(payload, timeout=timeout)
        except grpc.RpcError as err:
            name = method.rsplit("/", 1)[-1]
            raise BackendError(err.code().name, f"backend {name}: {err.details()}") from None

    def _undo(self, method: str, request, why: str) -> None:
        try:
            self.forward(NODE + method, request.SerializeToString(), None)
        except BackendError as err:
            log.error("could not roll back after %s: %s", why, err)

    def _outgoing(self, request) -> bytes:
        if not self.config.strip_context or request.volume_capability.WhichOneof("access_type") != "mount":
            return request.SerializeToString()
        copy = type(request)()
        copy.CopyFrom(request)
        flags = without_context(copy.volume_capability.mount.mount_flags)
        del copy.volume_capability.mount.mount_flags[:]
        copy.volume_capability.mount.mount_flags.extend(flags)
        return copy.SerializeToString()

    # ---- hooked node calls -----------------------------------------------------------------------------------

    def _resolve(self, path: str | None, field: str) -> str | None:
        """The path as mountinfo lists it, after its existing part was opened beneath the root with no
        symlink followed (refused: INVALID_ARGUMENT); a missing parent is the backend's to answer."""
        if path is None:
            return None
        with contextlib.suppress(FileNotFoundError), self.root.place(path, field) as place:
            place.check()
        return self.root.resolved(path)

    def _verify(self, path: str, field: str, plan) -> tuple[Verification, Mount | None]:
        """The backend's mount at `path`, found through the directory opened there again (the backend has
        worked on the path since it was checked) and listed in mountinfo at that very path, and what its
        context says."""
        entry = None
        with contextlib.suppress(FileNotFoundError), self.root.place(path, field) as place:
            found = self.mounter.top_mount(place)
            entry = found if mounted_here(place, found) else None
        return classify(entry, plan.context, path), entry

    def stage(self, request, context) -> bytes:
        staging = validate.node_stage(request, self.config.kubelet_root, allow_block=True)
        staging = self._resolve(staging, "staging_target_path")
        if request.volume_capability.WhichOneof("access_type") != "mount":
            return self.forward(NODE + "NodeStageVolume", request.SerializeToString(), context)
        plan = plan_mount(request.volume_capability, check_options=False)
        with self.locks.hold(volume_key(request.volume_id), path_key(staging)):
            check_stage_label(self.state, request.volume_id, plan.context)
            # One state write, after the backend succeeded: the backend owns the mount, and a crash before the
            # write leaves nothing to recover here (kubelet saw no success and repeats the call).
            response = self.forward(NODE + "NodeStageVolume", self._outgoing(request), context)
            verification = (self._verify(staging, "staging_target_path", plan)[0]
                            if plan.context is not None else
                            Verification(NO_CONTEXT, None, None, staging))
            # At stage time only a failure counts; a dropped context is relabelled after publish.
            if after_mount(verification.status, self.config.on_context_dropped, plan.context, None) == FAIL:
                self._undo("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=request.volume_id, staging_target_path=request.staging_target_path), "stage")
                raise ContextNotApplied(f"volume {request.volume_id}: {verification.describe()} (backend "
                                        f"NodeStageVolume was rolled back with NodeUnstageVolume)")
            with self.state.change():
                # not-mounted: the backend stages without a mount (block-style); checked at publish instead.
                self.state.staged[request.volume_id] = {
                    "staging_path": staging, "label": plan.context.text if plan.context else None,
                    "mount_flags": list(plan.mount_flags), "fs_type": plan.fs_type, "device": None,
                    "status": DONE, "verification": verification.status}
            if plan.context is not None:
                log.info("staged volume %s at %s via backend: %s", request.volume_id, staging,
                         verification.describe())
            return response

    def unstage(self, request, context) -> bytes:
        staging = self._resolve(validate.node_unstage(request, self.config.kubelet_root), "staging_target_path")
        with self.locks.hold(volume_key(request.volume_id), path_key(staging)):
            response = self.forward(NODE + "NodeUnstageVolume", request.SerializeToString(), context)
            if request.volume_id in self.state.staged:
                with self.state.change():
                    self.state.staged.pop(request.volume_id, None)
            return response

    def publish(self, request, context) -> bytes:
        target, staging = validate.node_publish(request, self.config.kubelet_root, staging_required=False,
                                                allow_block=True)
        staging = self._resolve(staging, "staging_target_path")
        target = self._resolve(target, "target_path")
        validate.no_overlap(target, staging)
        if request.volume_capability.WhichOneof("access_type") != "mount":
            return self.forward(NODE + "NodePublishVolume", request.SerializeToString(), context)
        plan = plan_mount(request.volume_capability, readonly=request.readonly, check_options=False)
        # The backend applies volume_mount_group itself when it advertises VOLUME_MOUNT_GROUP.
        plan = type(plan)(plan.fs_type, plan.mount_flags, plan.context, plan.context_flag, plan.readonly, None)
        requester = pod_of(request.volume_context)
        with self.locks.hold(volume_key(request.volume_id), path_key(staging), path_key(target)):
            check_publish_label(self.state, request.volume_id, plan.context, requester)
            response = self.forward(NODE + "NodePublishVolume", self._outgoing(request), context)
            verification, action = self._check_publish(request, target, staging, plan)
            with self.state.change():
                self.state.published[target] = {
                    "volume_id": request.volume_id, "staging_path": staging,
                    "label": plan.context.text if plan.context else None, "readonly": plan.readonly,
                    "mount_flags": list(plan.mount_flags), "pod": list(requester) if requester else None,
                    "status": DONE, "verification": verification.status, "action": action}
            if plan.context is not None:
                log.info("published volume %s at %s via backend: %s%s", request.volume_id, target,
                         verification.describe(), f"; {action}" if action != "nothing" else "")
            return response

    def _check_publish(self, request, target, staging, plan):
        if plan.context is None:
            return Verification(NO_CONTEXT, None, None, target), "nothing"
        verification, entry = self._verify(target, "target_path", plan)
        undo = csi_pb2.NodeUnpublishVolumeRequest(volume_id=request.volume_id, target_path=request.target_path)
        if verification.status == NOT_MOUNTED:
            self._undo("NodeUnpublishVolume", undo, "publish")
            raise ContextNotApplied(f"volume {request.volume_id}: the backend reported NodePublishVolume done but "
                                    f"nothing is mounted at {target}, so context= cannot have been applied")
        # A read-only target cannot be relabelled; its staging mount (same filesystem) can, when writable.
        relabel = (target, "target_path", entry)
        if entry is not None and entry.read_only and staging:
            staged = self._verify(staging, "staging_target_path", plan)[1]
            if staged is not None and staged.major_minor == entry.major_minor and not staged.read_only:
                relabel = (staging, "staging_target_path", staged)
        try:
            with self._opened_root(*relabel) as root, self._writable_root(root, relabel[2], verification) as walked:
                action = finish_publish(walked, verification, plan, self.config, request.volume_id, self.metrics,
                                        self.mounter)
        except BaseException:
            self._undo("NodeUnpublishVolume", undo, "publish")
            raise
        return verification, action

    @contextlib.contextmanager
    def _opened_root(self, path: str, field: str, entry: Mount):
        """A descriptor of the root of the mount `entry` found at `path`: the relabel and fsGroup walkers start
        from it, not from the path's names, which the backend's pod may rename meanwhile."""
        with self.root.place(path, field) as place:
            root = self.mounter.open_root_of(place, entry)
        try:
            yield root
        finally:
            os.close(root)

    @contextlib.contextmanager
    def _writable_root(self, root: int, entry: Mount | None, verification: Verification):
        """What the relabel walks: `root`, or, when its mount is a read-only view of a writable filesystem and
        no staging mount serves (a driver that publishes a read-only bind of a directory and stages without a
        mount, as csi-driver-host-path does), the same directory through a writable mount of it. The read-only
        mount is first checked as the walker would check it, since the view no longer shows what it binds."""
        if verification.status != DROPPED or entry is None or not entry.read_only:
            yield root
            return
        check_identity(root, verification.path, self.mounter.mounts(), entry.mount_id, True)
        view = self.mounter.open_writable_view(root, entry)
        if view is None:
            yield root
            return
        try:
            log.info("%s is a read-only mount of a writable filesystem; relabelling it through %s",
                     verification.path, os.readlink(f"/proc/self/fd/{view}"))
            yield view
        finally:
            os.close(view)

    def unpublish(self, request, context) -> bytes:
        target = self._resolve(validate.node_unpublish(request, self.config.kubelet_root), "target_path")
        with self.locks.hold(volume_key(request.volume_id), path_key(target)):
            response = self.forward(NODE + "NodeUnpublishVolume", request.SerializeToString(), context)
            if target in self.state.published:
                with self.state.change():
                    self.state.published.pop(target, None)
            return response

    # ---- calls that only carry paths -------------------------------------------------------------------------

    def _volume_paths(self, checked: list[str]) -> None:
        for field, path in zip(("volume_path", "staging_target_path"), checked):
            self.root.check_volume_path(path, field)

    def expand(self, request, context) -> bytes:
        self._volume_paths(validate.node_expand_volume(request, self.config.kubelet_root))
        return self.forward(NODE + "NodeExpandVolume", request.SerializeToString(), context)

    def stats(self, request, context) -> bytes:
        self._volume_paths(validate.node_get_volume_stats(request, self.config.kubelet_root))
        return self.forward(NODE + "NodeGetVolumeStats", request.SerializeToString(), context)
