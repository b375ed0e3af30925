"""What a process's cgroup path says about it: pod UID, container ID, runtime and cgroup driver.

Pure code. cgroup layouts recognised (cgroup v1 lines `N:controllers:/path` and the v2 line `0::/path`):

- systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '-' → '_'>.slice/
  crio-<64 hex>.scope` or `.../cri-containerd-<64 hex>.scope`; Guaranteed pods have no QoS slice
  (`kubepods-pod<uid>.slice`). kubelet writes '_' for '-' in the UID (`escapeSystemdCgroupName`,
  kubernetes pkg/kubelet/cm/cgroup_manager_linux.go).
- cgroupfs driver: `/kubepods/burstable/pod<uid>/<64 hex>` (containerd) or `.../pod<uid>/crio-<64 hex>`.
- CRI-O's monitor `crio-conmon-<64 hex>.scope` names the container but is not inside it: it counts as a
  runtime process, not as the container.

The container ID is the last 64-hex run on the path, as the security-profiles-operator does, which also
covers nested runtimes (SPO internal/pkg/util/containers.go).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?![0-9a-f])")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_RUNTIME_PREFIX = re.compile(r"(?:^|/)(crio-conmon|crio|cri-containerd|docker|libpod)-(?=[0-9a-f]{64})")


@dataclass(frozen=True)
class CgroupInfo:
    """What a process's cgroup path says about it."""

    path: str
    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None  # crio, containerd, docker, or None
    driver: str | None = None  # systemd or cgroupfs
    monitor: bool = False  # CRI-O's conmon: names a container but runs outside it

    @property
    def in_pod(self) -> bool:
        return self.pod_uid is not None and not self.monitor


def _runtime_name(prefix: str | None) -> str | None:
    return {"crio": "crio", "crio-conmon": "crio", "cri-containerd": "containerd", "docker": "docker",
            "libpod": "podman"}.get(prefix or "")


def parse_cgroup_path(path: str) -> CgroupInfo:
    """Pod UID, container ID, runtime and cgroup driver of one cgroup path (pure)."""
    uid_match = None
    for uid_match in _POD_UID.finditer(path):
        pass
    pod_uid = uid_match.group(1).replace("_", "-") if uid_match else None
    ids = _CONTAINER_ID.findall(path)
    container_id = ids[-1] if ids else None
    prefixes = _RUNTIME_PREFIX.findall(path)
    prefix = prefixes[-1] if prefixes else None
    # cgroupfs with containerd or docker writes the bare ID, so the runtime stays unknown there.
    runtime = _runtime_name(prefix)
    driver = None
    if "kubepods" in path:
        driver = "systemd" if ".slice" in path else "cgroupfs"
    return CgroupInfo(path=path, pod_uid=pod_uid, container_id=container_id, runtime=runtime,
                      driver=driver, monitor=prefix == "crio-conmon")


def parse_proc_cgroup(text: str) -> CgroupInfo | None:
    """The most telling line of /proc/<pid>/cgroup (v1 or v2), or None for empty text.

    On cgroup v1 every controller has its own line; the first one naming a pod wins, then the first one
    naming a container, then the unified (`0::`) or `name=systemd` line.
    """
    with_container: CgroupInfo | None = None
    unified: CgroupInfo | None = None
    first: CgroupInfo | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        info = parse_cgroup_path(parts[2])
        if info.pod_uid:
            return info
        if info.container_id and with_container is None:
            with_container = info
        if unified is None and (parts[0] == "0" or parts[1] == "name=systemd"):
            unified = info
        if first is None:
            first = info
    return with_container or unified or first

