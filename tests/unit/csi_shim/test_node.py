"""The built-in driver's node handlers without root: check -> lock -> plan -> publish.* -> mounter.*.

The kernel's side (mount(2), umount(2), loop devices, mountinfo) is csi_fake_mounter.FakeMounter; the rest is
real: a gRPC server on a unix socket with the shim's error mapping, the request checks, the plan, the records
and the journal on disk, the locks, and every CO path opened beneath a kubelet root on temp dirs. The same
sequences run on real mounts in tests/root/test_csi_driver.py.
"""

from __future__ import annotations

import contextlib
import os
from concurrent import futures

import grpc
import pytest
from prometheus_client import CollectorRegistry

from agent.errors import MountFailed
from agent.metrics import NodeMetrics
from csi_fake_mounter import FakeMounter, FakeNode
from csi_shim.locks import VolumeLocks
from csi_shim.node import NodeService
from csi_shim.plan import MS_BIND, MS_RDONLY, MS_REMOUNT
from csi_shim.proto import csi_pb2_grpc
from csi_shim.records import DONE
from tests.root.csi_helpers import LABEL_A, LABEL_A_OTHER_SPELLING, LABEL_B, context_flag, status_of

C = grpc.StatusCode
VOLUME = FakeNode.VOLUME
EMPTY = {"version": 1, "volumes": {}, "staged": {}, "published": {}}


class Node(FakeNode):
    """The built-in driver's NodeService over the fake mounter, with one volume created."""

    def serve(self, server):
        self.registry = CollectorRegistry()
        self.metrics = NodeMetrics(self.registry)
        self.image = os.path.join(self.config.state_dir, "volumes", f"{VOLUME}.img")
        with self.state.change():
            self.state.volumes[VOLUME] = {"name": "pvc-1", "capacity_bytes": 1 << 24, "fs_type": "ext4",
                                          "image": self.image, "status": DONE}
        self.service = NodeService(self.state, self.config, VolumeLocks(), self.metrics, self.root,
                                   mounter=self.fake)
        csi_pb2_grpc.add_NodeServicer_to_server(self.service, server)

    def saved(self) -> dict:
        """The state as a restart would load it, without the volume table."""
        plain = super().saved()
        plain.pop("volumes")
        return plain

    def decisions(self, decision: str) -> float:
        return self.registry.get_sample_value("selinux_mount_agent_decisions_total", {"decision": decision})

    def kinds(self) -> list[str]:
        return [call[0] for call in self.fake.calls]


@pytest.fixture
def node(tmp_path, request):
    with Node(tmp_path, **getattr(request, "param", {})) as subject:
        yield subject


def _label_of(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return os.getxattr(path, "security.selinux").rstrip(b"\0").decode()
    return None


def test_the_full_sequence_mounts_once_and_leaves_nothing(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging)
    node.client.publish(VOLUME, node.staging, target, pod=("team-a", "web-1"))
    assert node.kinds() == ["losetup", "mount", "bind"]
    (_, device, staged_on, fs_type, _, data), (_, source, bound_on, flags) = node.fake.calls[1:]
    assert (device, staged_on, fs_type, data, source, bound_on, flags) == (
        "/dev/loop0", node.staging, "ext4", "", node.staging, target, MS_BIND)
    record = node.saved()["published"][target]
    assert record["status"] == DONE and record["pod"] == ["team-a", "web-1"] and record["action"] == "nothing"
    assert os.path.isdir(target)  # the plugin creates the target directory (CSI spec)

    node.client.unpublish(VOLUME, target)
    node.client.unstage(VOLUME, node.staging)
    assert node.kinds()[3:] == ["umount", "umount", "detach"]
    assert not node.fake.table and not node.fake.loops and not os.path.exists(target)
    assert node.saved() == {k: v for k, v in EMPTY.items() if k != "volumes"}


def test_repeated_calls_answer_ok_without_mounting_again(node):
    target = node.client.target_path("pod-1")
    for _ in range(3):
        node.client.stage(VOLUME, node.staging, [context_flag(LABEL_A)])
    for _ in range(3):
        node.client.publish(VOLUME, node.staging, target, [context_flag(LABEL_A)])
    assert node.kinds().count("mount") == 1 and node.kinds().count("bind") == 1
    for _ in range(3):
        node.client.unpublish(VOLUME, target)
    for _ in range(3):
        node.client.unstage(VOLUME, node.staging)
    assert node.kinds().count("umount") == 2 and not node.fake.table and not node.fake.loops
    assert node.saved() == {"version": 1, "staged": {}, "published": {}}


def test_concurrent_stages_of_one_volume_mount_it_once(node):
    """kubelet retries while a call is still running: the volume's and the path's locks serialise them."""
    node.fake.mount_seconds = 0.05
    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        calls = [pool.submit(node.client.stage, VOLUME, node.staging, [context_flag(LABEL_A)]) for _ in range(16)]
        for call in calls:
            call.result()
    assert node.kinds() == ["losetup", "mount"] and len(node.fake.table) == 1


def test_a_repeat_with_other_arguments_is_refused(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging, ["noatime"])
    code, message = status_of(node.client.stage, VOLUME, node.staging, ["nodev"])
    assert code == C.ALREADY_EXISTS and "other mount flags" in message
    node.client.publish(VOLUME, node.staging, target, readonly=True)
    code, message = status_of(node.client.publish, VOLUME, node.staging, target, readonly=False)
    assert code == C.ALREADY_EXISTS and message == (f"{target} is already published with other arguments "
                                                    f"(volume {VOLUME}, readonly=True)")


def test_label_conflicts_use_kubelets_words_and_mount_nothing(node):
    node.client.stage(VOLUME, node.staging, [context_flag(LABEL_A)])
    first = node.client.target_path("pod-1")
    node.client.publish(VOLUME, node.staging, first, [context_flag(LABEL_A)], pod=("team-a", "web-0"))
    before = list(node.fake.calls)
    second = node.client.target_path("pod-2")
    code, message = status_of(node.client.publish, VOLUME, node.staging, second, [context_flag(LABEL_B)],
                              pod=("team-a", "web-1"))
    assert code == C.FAILED_PRECONDITION
    assert message == (f'conflicting SELinux labels of volume {VOLUME}: "{LABEL_A}" and "{LABEL_B}"; the volume '
                       f'is mounted for pod team-a/web-0; it must be unstaged before it can be mounted with '
                       f'another label')
    code, message = status_of(node.client.publish, VOLUME, node.staging, second, [context_flag(LABEL_B)],
                              pod=("team-b", "api-0"))
    assert code == C.FAILED_PRECONDITION and "mounted for another pod;" in message and "web-0" not in message
    code, message = status_of(node.client.stage, VOLUME, node.staging, [])
    assert code == C.FAILED_PRECONDITION and f'"{LABEL_A}" and ""' in message
    assert node.fake.calls == before and second not in node.saved()["published"]
    # The same label in another spelling is the same label: no conflict.
    node.client.publish(VOLUME, node.staging, second, [context_flag(LABEL_A_OTHER_SPELLING)])
    assert second in node.saved()["published"]


def test_a_failed_stage_mount_leaves_nothing_recorded_or_attached(node):
    node.fake.fail_next = MountFailed("mount /dev/loop0: Input/output error (errno EIO)")
    code, message = status_of(node.client.stage, VOLUME, node.staging, [context_flag(LABEL_A)])
    assert (code, message) == (C.INTERNAL, "mount /dev/loop0: Input/output error (errno EIO)")
    assert node.kinds() == ["losetup", "mount", "detach"]  # the loop attached by this call is detached again
    assert not node.fake.table and not node.fake.loops
    assert node.saved() == {"version": 1, "staged": {}, "published": {}}  # the pending record is gone
    node.client.stage(VOLUME, node.staging, [context_flag(LABEL_A)])  # kubelet's retry starts clean
    assert node.saved()["staged"][VOLUME]["status"] == DONE


def test_a_failed_bind_leaves_no_target_and_no_record(node):
    node.client.stage(VOLUME, node.staging)
    target = node.client.target_path("pod-1")
    node.fake.fail_next = MountFailed("mount: Cannot allocate memory (errno ENOMEM)")
    code, _ = status_of(node.client.publish, VOLUME, node.staging, target)
    assert code == C.INTERNAL
    assert not os.path.exists(target) and node.saved()["published"] == {}
    assert [m.mount_point for m in node.fake.table] == [node.staging]


@pytest.mark.parametrize("node", [{"on_context_dropped": "fail"}], indirect=True)
def test_fail_mode_refuses_a_dropped_context_and_undoes_the_mount(node):
    code, message = status_of(node.client.stage, VOLUME, node.staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION
    assert message.startswith(f"volume staged at {node.staging}: {node.staging} was mounted with "
                              f'context="{LABEL_A}" but /proc/self/mountinfo shows no context= on it')
    assert node.kinds() == ["losetup", "mount", "undo", "detach"]
    assert not node.fake.table and not node.fake.loops and node.saved()["staged"] == {}


def test_a_dropped_context_is_relabelled_after_publish(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging, [context_flag(LABEL_A)])
    assert node.fake.calls[1][5] == context_flag(LABEL_A)  # the flag reached mount(2) as kubelet sent it
    assert node.saved()["staged"][VOLUME]["verification"] == "dropped"
    node.client.publish(VOLUME, node.staging, target, [context_flag(LABEL_A)])
    record = node.saved()["published"][target]
    assert (record["verification"], record["action"]) == ("dropped", "relabel")
    assert node.decisions("recursive") == 1 and node.decisions("mount") == 0
    if os.geteuid() == 0:  # security.* xattrs need CAP_SYS_ADMIN; the walker ran on the bound directory
        assert _label_of(target) == LABEL_A


def test_an_applied_context_needs_no_relabel(node):
    node.fake.selinux = True
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging, [context_flag(LABEL_A)])
    node.client.publish(VOLUME, node.staging, target, [context_flag(LABEL_A)])
    record = node.saved()["published"][target]
    assert (record["verification"], record["action"]) == ("applied", "nothing")
    assert node.decisions("mount") == 1 and _label_of(target) is None


def test_a_mount_group_without_a_label_gets_the_ownership_pass(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging)
    node.client.publish(VOLUME, node.staging, target, group="4711")
    assert node.saved()["published"][target]["action"] == "fs-group"
    assert node.registry.get_sample_value("selinux_mount_agent_fs_group_passes_total", {"combined": "false"}) == 1
    if os.geteuid() == 0:  # chown to another group needs CAP_CHOWN; failed entries are only logged (kubelet)
        assert os.stat(target).st_gid == 4711


def test_a_dropped_context_on_a_read_only_filesystem_fails_at_stage(node):
    node.fake.read_only_filesystems.add("ext4")
    code, message = status_of(node.client.stage, VOLUME, node.staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION and "no context= on it" in message
    assert not node.fake.table and node.saved()["staged"] == {}


def test_a_read_only_publish_is_remounted_read_only(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging)
    node.client.publish(VOLUME, node.staging, target, readonly=True)
    assert node.kinds() == ["losetup", "mount", "bind", "remount"]
    assert node.fake.calls[-1] == ("remount", "none", target, MS_BIND | MS_REMOUNT | MS_RDONLY)
    (staged, bound) = node.fake.table
    assert not staged.read_only and bound.read_only
    assert node.saved()["published"][target]["readonly"] is True
    node.client.publish(VOLUME, node.staging, target, readonly=True)  # a repeat
    assert node.kinds().count("remount") == 1


def test_unstage_is_refused_while_published(node):
    target = node.client.target_path("pod-1")
    node.client.stage(VOLUME, node.staging)
    node.client.publish(VOLUME, node.staging, target)
    code, message = status_of(node.client.unstage, VOLUME, node.staging)
    assert code == C.FAILED_PRECONDITION
    assert message == f"volume {VOLUME} is still published at {target}"
    assert len(node.fake.table) == 2 and VOLUME in node.saved()["staged"]


def test_a_bad_path_is_refused_before_anything_is_mounted(node, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code, _ = status_of(node.client.stage, VOLUME, str(outside))
    assert code == C.INVALID_ARGUMENT
    os.symlink(outside, os.path.join(node.config.kubelet_root, "link"))
    code, _ = status_of(node.client.stage, VOLUME, os.path.join(node.config.kubelet_root, "link"))
    assert code in (C.INVALID_ARGUMENT, C.NOT_FOUND)
    assert node.fake.calls == [] and node.saved()["staged"] == {}


def test_the_fake_stands_in_for_every_kernel_call_the_handlers_make():
    """Each `self.mounter.X` in the handlers exists in csi_shim.mounter and in the fake with the same
    parameters, so the fake cannot drift from what it replaces."""
    import inspect
    import re

    from csi_shim import mounter, node, proxy

    used = set()
    for module in (node, proxy):
        used |= set(re.findall(r"self\.mounter\.(\w+)", inspect.getsource(module)))
    assert {"mount_filesystem", "mount", "undo_mount", "unmount_place", "open_top", "attach_loop"} <= used
    for name in sorted(used):
        real = list(inspect.signature(getattr(mounter, name)).parameters)
        fake = list(inspect.signature(getattr(FakeMounter, name)).parameters)[1:]
        assert fake == real, name
