"""The CSI plugin the proxy tests put behind kubelet's calls: csi-driver-host-path (a real driver none of
this project's code wrote) and our shim run through its CLI in front of it, as a node runs them.

hostpathplugin is found at $HOSTPATHPLUGIN (the CI guest's copy, vm/disks.py) or ../shared/tools next to the
tree; where neither exists the tests that need it skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest

from agent.label import Label
from tests.root.csi_helpers import REPO, Client, ShimProcess, cleanup, context_flag, loops_under, mounts_under

HOSTPATH_DRIVER = "hostpath.csi.k8s.io"
POD = ("team-a", "web-0")
SEED = "there before the pod\n"  # what a volume holds before its pod starts: the relabel must reach it


def label_of(path: str) -> Label:
    """The label the kernel reports for a file (security.selinux, link not followed)."""
    return Label.parse(os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0").decode())


def hostpath_binary() -> str:
    """The hostpathplugin to run, or a skip that says where it was looked for."""
    for candidate in (os.environ.get("HOSTPATHPLUGIN"), os.path.join(REPO, "..", "shared", "tools",
                                                                     "hostpathplugin")):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    pytest.skip("hostpathplugin (csi-driver-host-path) not found: set HOSTPATHPLUGIN or put it at "
                "../shared/tools/hostpathplugin (vm/disks.py copies it into the guest from there)")


class HostpathPlugin:
    """csi-driver-host-path's node+controller plugin on a unix socket; it keeps each mount volume as the
    directory <statedir>/<volume id> and publishes it with a bind mount."""

    def __init__(self, workdir: str):
        self.socket = f"{workdir}/hp.sock"
        self.statedir = f"{workdir}/hp"
        self.log = open(f"{workdir}/hostpath.log", "ab")
        self.proc = subprocess.Popen([hostpath_binary(), f"--endpoint=unix://{self.socket}", "--nodeid=node-1",
                                      f"--drivername={HOSTPATH_DRIVER}", f"--statedir={self.statedir}"],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hostpathplugin did not start; see {workdir}/hostpath.log")
            time.sleep(0.05)

    def volume_dir(self, volume_id: str) -> str:
        return os.path.join(self.statedir, volume_id)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@contextlib.contextmanager
def proxy_in_front_of_hostpath(workdir):
    """hostpathplugin, `selinux-mount-agent csi --backend-endpoint` (the CLI, in its own process) in front of
    it, and a kubelet-like client of the shim; at the end every mount below `workdir` is gone (asserted)."""
    workdir = str(workdir)
    plugin = HostpathPlugin(workdir)
    shim = client = None
    try:
        shim = ShimProcess(workdir, "--backend-endpoint", f"unix://{plugin.socket}").start()
        client = Client(f"{workdir}/csi.sock", f"{workdir}/kubelet")
        yield plugin, shim, client
    finally:
        if client is not None:
            client.close()
        if shim is not None:
            shim.stop()
        plugin.stop()
        leftovers = mounts_under(workdir)
        cleanup(workdir)
        assert not leftovers and not loops_under(workdir), leftovers


def stage_and_publish(client: Client, volume_id: str, label: str, pod_dir: str = "pod-own",
                      readonly: bool = False) -> tuple[str, str]:
    """kubelet's NodeStage and NodePublish of a volume for a pod whose volumes get `label` by context= mount:
    the paths kubelet uses, the flag as kubelet writes it; (staging, target)."""
    staging = client.staging_path(volume_id)
    target = client.target_path(pod_dir)
    flags = [context_flag(label)]
    client.stage(volume_id, staging, flags)
    client.publish(volume_id, staging, target, flags, readonly=readonly, pod=POD)
    return staging, target


def unpublish_unstage_delete(client: Client, volume_id: str, staging: str, target: str) -> None:
    client.unpublish(volume_id, target)
    client.unstage(volume_id, staging)
    client.delete(volume_id)


def published_record(workdir, target: str) -> dict:
    """What the shim process wrote down for a publish: its state file (snapshot plus journal), read back."""
    from csi_shim.journal import State

    reader = State(os.path.join(str(workdir), "state", "csi-state.json"))
    try:
        return reader.plain()["published"][target]
    finally:
        reader.close()
