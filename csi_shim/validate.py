"""Argument checks for CSI requests: every handler calls one of these before it touches anything.

Pure code over request messages. A failed check raises `InvalidInput` (INVALID_ARGUMENT) or `PathOutsideRoot`
(INVALID_ARGUMENT), never anything that mounts or writes. The field names in the messages are the CSI spec's,
so a kubelet log line and our error point at the same thing.
"""

from __future__ import annotations

import posixpath
import re

from agent.errors import InvalidInput, PathOutsideRoot, VolumeNotFound
from csi_shim.plan import option_problem

# CSI spec, VolumeCapability.MountVolume.mount_flags: "The total size of this repeated field SHALL NOT
# exceed 4 KiB."
MAX_MOUNT_FLAGS_BYTES = 4096
# CSI spec: volume ids and names up to 128 bytes are the SP's business; paths are bounded by PATH_MAX.
MAX_ID_BYTES = 128
MAX_PATH_BYTES = 4096

# Access modes a single-node driver can honour (csi.v1 VolumeCapability.AccessMode.Mode numbers).
SINGLE_NODE_MODES = {1, 2, 6, 7}  # SINGLE_NODE_WRITER, _READER_ONLY, _SINGLE_WRITER, _MULTI_WRITER
READ_ONLY_MODES = {2, 3}           # SINGLE_NODE_READER_ONLY, MULTI_NODE_READER_ONLY

# volume_context of a pre-provisioned volume on a given block device (docs/csi-shim.md).
DEVICE_KEY = "device"
FORMAT_KEY = "format"
# CSI spec, Topology: a value "MUST be 63 characters or less, begin and end with an alphanumeric character
# with '-', '_', '.', or alphanumerics in between" (kubelet also writes it as a node label value).
_TOPOLOGY_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def required(value, field: str):
    """The CSI spec marks the field REQUIRED: empty strings, zero-length lists and unset messages fail."""
    if not value:
        raise InvalidInput(f"{field} is required")
    return value


def identifier(value: str, field: str) -> str:
    required(value, field)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidInput(f"{field} is longer than {MAX_ID_BYTES} bytes")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value) or "/" in value:
        raise InvalidInput(f"{field} {value!r} contains a control character or '/'")
    return value


def path_below(path: str, root: str, field: str) -> str:
    """An absolute, normalised path strictly below `root`; refuses '..', NUL and anything outside.

    kubelet only ever hands out paths under its root directory (`--root-dir`, /var/lib/kubelet by default),
    so anything else is a caller trying to make the node plugin mount over some other part of the host.
    """
    required(path, field)
    if "\0" in path:
        raise InvalidInput(f"{field} contains a NUL byte")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidInput(f"{field} is longer than {MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        raise PathOutsideRoot(f"{field} {path!r} is not an absolute path")
    if ".." in path.split("/"):
        raise PathOutsideRoot(f"{field} {path!r} contains '..'")
    normal = posixpath.normpath(path)
    root = posixpath.normpath(root)
    if not _strictly_below(normal, root):
        raise PathOutsideRoot(f"{field} {path!r} is not below the kubelet root directory {root}")
    return normal


def _strictly_below(normal: str, root: str) -> bool:
    return normal != root and normal.startswith(root.rstrip("/") + "/")


def volume_path(path: str, root: str, field: str) -> str:
    """A path that must hold a mounted volume (NodeGetVolumeStats, NodeExpandVolume): outside the kubelet root
    no volume of this node can be there, which the CSI spec answers with NOT_FOUND ("does not exist on the
    specified volume_path"). Nothing is forwarded or looked at outside the root."""
    try:
        return path_below(path, root, field)
    except PathOutsideRoot as err:
        raise VolumeNotFound(str(err)) from None


def volume_capability(capability, field: str = "volume_capability", *, allow_block: bool = False):
    """One VolumeCapability: an access type and a known access mode."""
    if capability is None or not capability.ByteSize() and not capability.HasField("access_mode"):
        raise InvalidInput(f"{field} is required")
    access_type = capability.WhichOneof("access_type")
    if access_type is None:
        raise InvalidInput(f"{field}.access_type is required (mount or block)")
    if access_type == "block" and not allow_block:
        raise InvalidInput(f"{field}: block volumes are not supported, only mount")
    if not capability.HasField("access_mode"):
        raise InvalidInput(f"{field}.access_mode is required")
    if capability.access_mode.mode == 0:
        raise InvalidInput(f"{field}.access_mode.mode is required (not UNKNOWN)")
    if access_type == "mount":
        mount_flags(capability.mount.mount_flags, f"{field}.mount.mount_flags")
    return capability


def mount_flags(flags, field: str = "mount_flags") -> list[str]:
    total = sum(len(flag.encode("utf-8", "surrogatepass")) for flag in flags)
    if total > MAX_MOUNT_FLAGS_BYTES:
        raise InvalidInput(f"{field} total {total} bytes, above the CSI limit of {MAX_MOUNT_FLAGS_BYTES}")
    for index, flag in enumerate(flags):
        if not flag or "\0" in flag or "\n" in flag:
            raise InvalidInput(f"{field} holds an empty flag or one with a NUL or newline")
        problem = option_problem(flag)
        if problem:
            raise InvalidInput(f"{field}[{index}] {flag!r} {problem}")
    return list(flags)


def volume_capabilities(capabilities, field: str = "volume_capabilities", *, allow_block: bool = False):
    required(list(capabilities), field)
    for index, capability in enumerate(capabilities):
        volume_capability(capability, f"{field}[{index}]", allow_block=allow_block)
    return capabilities


def capacity_range(capacity):
    """(required, limit) in bytes, 0 meaning unset; both non-negative and ordered."""
    if capacity is None:
        return 0, 0
    req, limit = capacity.required_bytes, capacity.limit_bytes
    if req < 0 or limit < 0:
        raise InvalidInput("capacity_range bytes must not be negative")
    if limit and req > limit:
        raise InvalidInput(f"capacity_range.required_bytes {req} is above limit_bytes {limit}")
    return req, limit


# ---- one function per RPC: what the CSI spec marks REQUIRED, in the order a reader expects ---------------

def create_volume(request) -> None:
    identifier(request.name, "name")
    volume_capabilities(request.volume_capabilities)
    capacity_range(request.capacity_range if request.HasField("capacity_range") else None)


def delete_volume(request) -> None:
    required(request.volume_id, "volume_id")


def validate_volume_capabilities(request) -> None:
    required(request.volume_id, "volume_id")
    required(list(request.volume_capabilities), "volume_capabilities")


def node_stage(request, kubelet_root: str, *, allow_block: bool = False) -> str:
    required(request.volume_id, "volume_id")
    staging = path_below(request.staging_target_path, kubelet_root, "staging_target_path")
    if not request.HasField("volume_capability"):
        raise InvalidInput("volume_capability is required")
    volume_capability(request.volume_capability, allow_block=allow_block)
    return staging


def node_unstage(request, kubelet_root: str) -> str:
    required(request.volume_id, "volume_id")
    return path_below(request.staging_target_path, kubelet_root, "staging_target_path")


def node_publish(request, kubelet_root: str, *, staging_required: bool = True,
                 allow_block: bool = False) -> tuple[str, str | None]:
    required(request.volume_id, "volume_id")
    staging = None
    if staging_required or request.staging_target_path:
        staging = path_below(request.staging_target_path, kubelet_root, "staging_target_path")
    target = path_below(request.target_path, kubelet_root, "target_path")
    if not request.HasField("volume_capability"):
        raise InvalidInput("volume_capability is required")
    volume_capability(request.volume_capability, allow_block=allow_block)
    no_overlap(target, staging)
    return target, staging


def no_overlap(target: str, staging: str | None) -> None:
    """A target inside the staging path (or the reverse) would mount the volume into itself."""
    if staging is not None and (target == staging or target.startswith(staging + "/")
                                or staging.startswith(target + "/")):
        raise InvalidInput(f"target_path {target!r} and staging_target_path {staging!r} overlap")


def node_unpublish(request, kubelet_root: str) -> str:
    required(request.volume_id, "volume_id")
    return path_below(request.target_path, kubelet_root, "target_path")


def node_get_volume_stats(request, kubelet_root: str) -> list[str]:
    """The checked paths: volume_path, then staging_target_path when given."""
    required(request.volume_id, "volume_id")
    required(request.volume_path, "volume_path")
    paths = [volume_path(request.volume_path, kubelet_root, "volume_path")]
    if request.staging_target_path:
        paths.append(volume_path(request.staging_target_path, kubelet_root, "staging_target_path"))
    return paths


# NodeExpandVolume carries the same volume_id, volume_path and optional staging_target_path.
node_expand_volume = node_get_volume_stats


# ---- pre-provisioned volumes and topology ---------------------------------------------------------------------

def static_device(volume_context) -> tuple[str, bool] | None:
    """(device path, format allowed) of a pre-provisioned volume on a given block device; None without one.

    The path must be absolute and normal; whether it is a block device is the caller's check (it needs a stat).
    `format` is "true" or "false" (the default): a blank device is only formatted when asked to.
    """
    device = volume_context.get(DEVICE_KEY, "")
    allow = volume_context.get(FORMAT_KEY, "")
    if not device:
        if allow:
            raise InvalidInput(f"volume_context {FORMAT_KEY} is only meaningful with {DEVICE_KEY}")
        return None
    if "\0" in device or len(device.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidInput(f"volume_context {DEVICE_KEY} contains a NUL byte or is too long")
    if not device.startswith("/") or ".." in device.split("/") or posixpath.normpath(device) != device:
        raise InvalidInput(f"volume_context {DEVICE_KEY} {device!r} must be an absolute, normalised path "
                           f"to a block device")
    if allow not in ("", "true", "false"):
        raise InvalidInput(f"volume_context {FORMAT_KEY} {allow!r} must be \"true\" or \"false\"")
    return device, allow == "true"


def topology_value_problem(value: str) -> str | None:
    """Why `value` cannot be a topology segment value (and so kubelet's node label), or None."""
    if _TOPOLOGY_VALUE.match(value):
        return None
    return ("a topology value must be 63 characters or less, begin and end with a letter or digit, and hold "
            "only letters, digits, '-', '_' and '.'")
