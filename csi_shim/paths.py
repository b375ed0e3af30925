"""The filesystem half of the path checks: where a staging or target path really leads.

validate.path_below checks the text of a path; mount(2) and umount(2) follow symbolic links in it, so a link
under the kubelet root could point a mount at any directory of the host. Here the existing part of each path
is resolved (os.path.realpath follows every link of the deepest existing ancestor, a dangling one included)
and validate.resolved_below, pure, decides. Callers then work on the resolved path: it is what mount(2)
acts on and what /proc/self/mountinfo lists, so mounts are found again however kubelet spelled the path
(a symlinked kubelet root included).
"""

from __future__ import annotations

import os

from agent.errors import PathOutsideRoot, VolumeNotFound
from csi_shim import validate


def resolve_inside_root(path: str, root: str, field: str) -> str:
    """The real path of `path` (already checked by validate.path_below), refused when it leaves the root."""
    resolved = os.path.realpath(path)
    validate.resolved_below(path, resolved, os.path.realpath(root), field)
    return resolved


def resolve_volume_path(path: str, root: str, field: str) -> str:
    """resolve_inside_root for a path that must hold a mounted volume: outside the root none can be there,
    which the CSI spec answers with NOT_FOUND (see validate.volume_path)."""
    try:
        return resolve_inside_root(path, root, field)
    except PathOutsideRoot as err:
        raise VolumeNotFound(str(err)) from None
