"""From a CSI request to a mount plan: filesystem, mount(2) flags and data, and the SELinux context.

Pure code. kubelet hands the label over as one extra element of `mount_flags`, `context="<label>"` with Go
`%q` quoting (pkg/volume/util AddSELinuxMountOption), appended after the PV's own mountOptions, on both
NodeStageVolume and NodePublishVolume (KEP-1710, CSIDriver.spec.seLinuxMount). The plan keeps that flag
exactly as given, because it is what the kernel must receive, and keeps the parsed `Label` beside it,
because comparisons (conflicts, verification against mountinfo) must be canonical: `s0:c2,c1` and
`s0:c1,c2` are one label.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import AgentError, InvalidInput, LabelConflict
from agent.label import CONTEXT_OPTION_KEYS, Label, go_quote, parse_context_option
from agent.parsing.numbers import ascii_decimal


class TopologyUnsatisfiable(AgentError):
    """CreateVolume whose `accessibility_requirements.requisite` leaves out this node: a node-local volume can
    only be made here (CSI spec: "Unable to provision in `accessible_topology`")."""

    code = "RESOURCE_EXHAUSTED"


class DeviceUnusable(AgentError):
    """A given block device that holds something other than a filesystem this driver mounts, or nothing while
    formatting was not asked for: the data on it is not the driver's to overwrite."""

    code = "FAILED_PRECONDITION"

# mount(2) flag bits (include/uapi/linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# Options mount(8) turns into flag bits; (set, clear). Everything else goes to the filesystem as data.
_FLAG_OPTIONS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0), "norelatime": (0, MS_RELATIME),
    "strictatime": (MS_STRICTATIME, 0), "nostrictatime": (0, MS_STRICTATIME),
    "lazytime": (MS_LAZYTIME, 0), "nolazytime": (0, MS_LAZYTIME),
    "nosymfollow": (MS_NOSYMFOLLOW, 0),
}
# Flags that live on each mount (not the superblock), so a bind mount must repeat them.
PER_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME \
    | MS_STRICTATIME | MS_NOSYMFOLLOW
# fstab-only words that mean nothing to the kernel.
_USERSPACE_ONLY = {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users"}
# Words that would turn a filesystem mount into something else.
_REFUSED = {"bind", "rbind", "remount", "move", "loop", "shared", "rshared", "slave", "rslave", "private",
            "rprivate", "unbindable", "runbindable"}

SUPPORTED_FS_TYPES = ("ext4", "xfs")
DEFAULT_FS_TYPE = "ext4"

# A gid is 32 bits; (gid_t)-1 means "no change" to chown(2), so it is not a group.
MAX_GROUP_ID = 2**32 - 2

POD_NAME_KEY = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"


@dataclass(frozen=True)
class MountPlan:
    """What to mount: the flags as given (the `context=` one included, in place), split for mount(2)."""

    fs_type: str
    mount_flags: tuple[str, ...]
    context: Label | None
    context_flag: str | None
    readonly: bool = False
    mount_group: int | None = None

    @property
    def flags_without_context(self) -> tuple[str, ...]:
        return tuple(flag for flag in self.mount_flags if flag != self.context_flag)

    def syscall(self) -> tuple[int, str]:
        """(flag bits, data string) for mount(2) of the filesystem itself."""
        bits, data = kernel_options(self.mount_flags)
        if self.readonly:
            bits |= MS_RDONLY
        return bits, data

    def bind_flags(self) -> int:
        """Per-mount flag bits the published bind mount must carry (readonly honoured)."""
        bits, _ = kernel_options(self.mount_flags)
        bits &= PER_MOUNT_FLAGS
        if self.readonly:
            bits |= MS_RDONLY
        return bits

    def to_json(self) -> dict:
        return {"fs_type": self.fs_type, "mount_flags": list(self.mount_flags),
                "context": self.context.text if self.context else None, "readonly": self.readonly,
                "mount_group": self.mount_group}


def option_problem(flag: str) -> str | None:
    """Why one CSI mount flag cannot go into mount(2)'s data string as one option; None when it can.

    The flags are joined with ',' into one string, which the kernel splits again at every comma outside double
    quotes, and a context value loses its double quotes (security/selinux/hooks.c, opt_len and
    selinux_sb_eat_lsm_opts). A comma or a double quote inside a flag would therefore hand the kernel options
    (a context= among them) that were never checked as options. The one form that needs either is kubelet's:
    `context="<label>"` (pkg/volume/util AddSELinuxMountOption, Go %q), whose quotes keep the commas of a
    category list inside the label. Single quotes mean nothing to the kernel: they would become part of the
    label. An unquoted label without a comma is read by the kernel exactly as the quoted one.
    """
    key, sep, value = flag.partition("=")
    if sep and key in CONTEXT_OPTION_KEYS:
        kubelet_form = f'{key}="<label>"'
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"') or '"' in value[1:-1]:
                return f"does not close its double quotes at its end; kubelet writes {kubelet_form}"
            return None
        if value.startswith("'"):
            return (f"quotes its label with single quotes, which the kernel would keep as part of the label; "
                    f"kubelet writes {kubelet_form}")
        if "," in value or '"' in value:
            return (f"holds an unquoted label with ',' or '\"', which the kernel would split or strip; kubelet "
                    f"writes {kubelet_form}")
        return None
    if "," in flag:
        return ("holds ','; each mount flag is one option, so list them as separate flags (a comma belongs only "
                'inside the double quotes of context="<label>")')
    if '"' in flag:
        return "holds a double quote, which would change where the kernel splits the mount options"
    return None


def kernel_options(options) -> tuple[int, str]:
    """Split mount(8)-style options into mount(2) flag bits and the filesystem's data string.

    Context options go to the data string untouched (quotes included): the SELinux LSM parses them there, and
    anything that rewrote them could drop or change the label without a word. An option that would not stay
    one option in that string is refused here too, whatever checked it before.
    """
    bits = 0
    data = []
    for option in options:
        problem = option_problem(option)
        if problem:
            raise InvalidInput(f"mount flag {option!r} {problem}")
        if option in _FLAG_OPTIONS:
            set_bits, clear_bits = _FLAG_OPTIONS[option]
            bits = (bits | set_bits) & ~clear_bits
        elif option in _USERSPACE_ONLY or option.startswith("x-") or option.startswith("comment="):
            continue
        elif option in _REFUSED:
            raise InvalidInput(f"mount flag {option!r} is not allowed in mount_flags")
        else:
            data.append(option)
    return bits, ",".join(data)


def context_of(flags) -> tuple[Label | None, str | None]:
    """The label of the one `context=` flag, and the flag text; (None, None) without one.

    A second `context=` flag, or a bad label, is refused before anything is mounted.
    """
    found: tuple[Label, str] | None = None
    for flag in flags:
        key = flag.partition("=")[0]
        if key not in CONTEXT_OPTION_KEYS:
            continue
        parsed = parse_context_option(flag)  # raises InvalidLabel (INVALID_ARGUMENT)
        if parsed[0] != "context":
            continue
        if found is not None:
            raise InvalidInput(f"mount_flags hold more than one context= flag: {found[1]!r} and {flag!r}")
        found = (parsed[1], flag)
    if found is None:
        return None, None
    if any(flag.partition("=")[0] in ("fscontext", "defcontext", "rootcontext") for flag in flags):
        # The kernel refuses context= together with these (security/selinux/hooks.c, "context" excludes
        # "fscontext" and "defcontext"); say so before mount(2) gives a bare EINVAL.
        raise InvalidInput("mount_flags combine context= with fscontext=, defcontext= or rootcontext=")
    return found


def mount_group(text: str) -> int | None:
    """VolumeCapability.MountVolume.volume_mount_group: kubelet passes the pod's fsGroup as a decimal id."""
    if not text:
        return None
    gid = ascii_decimal(text, MAX_GROUP_ID)  # kubelet writes it with strconv.FormatInt: ASCII digits
    if gid is None:
        raise InvalidInput(f"volume_mount_group {text!r} is not a group id (0 to {MAX_GROUP_ID})")
    return gid


def plan_mount(capability, *, readonly: bool = False, default_fs_type: str = DEFAULT_FS_TYPE,
               fs_types=None, check_options: bool = True) -> MountPlan:
    """The plan for one NodeStageVolume or NodePublishVolume capability (already validated).

    `check_options=False` (proxy mode) leaves every flag but `context=` to the backend plugin."""
    mount = capability.mount
    fs_type = mount.fs_type or default_fs_type
    if fs_types is not None and fs_type not in fs_types:
        raise InvalidInput(f"fs_type {fs_type!r} is not supported; use one of {', '.join(fs_types)}")
    flags = tuple(mount.mount_flags)
    label, flag = context_of(flags)
    if check_options:
        kernel_options(flags)  # refuse bind/remount/... early
    if capability.access_mode.mode in (2, 3):  # *_READER_ONLY access modes
        readonly = True
    return MountPlan(fs_type, flags, label, flag, readonly, mount_group(mount.volume_mount_group))


def without_context(flags) -> list[str]:
    """mount_flags with the `context=` flag removed (for backends known to reject it)."""
    out = []
    for flag in flags:
        if flag.partition("=")[0] == "context":
            continue
        out.append(flag)
    return out


def pod_of(volume_context) -> tuple[str, str] | None:
    """(namespace, name) of the pod, when the CSIDriver has podInfoOnMount: true."""
    name = volume_context.get(POD_NAME_KEY, "")
    namespace = volume_context.get(POD_NAMESPACE_KEY, "")
    return (namespace, name) if name else None


def _quoted(label: Label | None) -> str:
    # kubelet prints a pod without a label as "" (issue #133424), with Go %q quoting otherwise.
    return go_quote(label.text if label else "")


def label_conflict(volume_id: str, held: Label | None, wanted: Label | None, holders=(),
                   requester_namespace: str | None = None) -> LabelConflict:
    """kubelet's text (desired_state_of_world.go AddPodToVolume), plus who holds the mount.

    Like the KEP-1710 events, a holder in the requester's namespace is named; one in another namespace, or any
    holder when the requester's namespace is not known (NodeStageVolume carries no pod), is only counted.
    """
    message = f"conflicting SELinux labels of volume {volume_id}: {_quoted(held)} and {_quoted(wanted)}"
    named = sorted({f"{ns}/{name}" for ns, name in holders if requester_namespace and ns == requester_namespace})
    hidden = sum(1 for ns, _ in holders if not (requester_namespace and ns == requester_namespace))
    parts = []
    if named:
        parts.append(f"pod {', '.join(named)}")
    if hidden:
        parts.append("another pod" if hidden == 1 else f"{hidden} other pods")
    if parts:
        message += f"; the volume is mounted for {' and '.join(parts)}"
    message += "; it must be unstaged before it can be mounted with another label"
    return LabelConflict(message)


# ---- what to do once the mount is there --------------------------------------------------------------------

NOTHING = "nothing"
RELABEL = "relabel"      # recursive relabel (and fsGroup) with the walker
FS_GROUP = "fs-group"    # fsGroup ownership only
FAIL = "fail"


def after_mount(status: str, on_dropped: str, label: Label | None, group: int | None,
                writable: bool = True) -> str:
    """Pure decision after a published mount was read back from mountinfo.

    `status` is the verifier's (applied, dropped, mismatch, no-context). A context that was asked for and
    is missing means kubelet will tell the runtime not to relabel while nothing labelled the files: either
    label them now with the walker, or fail so the pod does not start with wrongly labelled data. A different
    context than asked for cannot be fixed by relabelling (a context mount overrides every file's label).

    `writable` is False when the filesystem under the path is mounted read-only (a reader-only access mode
    stages it so): nothing can be written there, so a dropped context cannot be relabelled (FAIL), and the
    fsGroup ownership pass is skipped, as kubelet skips it for read-only volumes (csi_mounter supportsFSGroup).
    """
    if status == "mismatch":
        return FAIL
    if status == "dropped":
        return RELABEL if on_dropped == "relabel" and writable else FAIL
    if group is not None and writable:
        return FS_GROUP
    return NOTHING


def dropped_hint(on_dropped: str, writable: bool) -> str:
    """What follows a dropped context in a FAILED_PRECONDITION message: why no relabel made up for it."""
    if on_dropped != "relabel":
        return ("; the files were not relabelled (--on-context-dropped=fail), so the pod would start with labels "
                "that do not match its context")
    if not writable:
        return ("; the volume's filesystem is mounted read-only (a *_READER_ONLY access mode), so its files "
                "cannot be relabelled instead, and the pod would start with labels that do not match its context")
    return ""


# ---- topology ------------------------------------------------------------------------------------------------

def topology_key(driver_name: str) -> str:
    """The segment key of this driver's topology: one value per node, since every volume is node-local."""
    return f"topology.{driver_name}/node"


def node_topology(driver_name: str, node_id: str) -> dict[str, str]:
    return {topology_key(driver_name): node_id}


def topology_satisfied(requirement, here: dict[str, str]) -> bool:
    """Whether a volume on this node meets a CreateVolume `accessibility_requirements` (None: no requirement).

    Only `requisite` binds (CSI spec: without it the SP "MAY choose from the list of all possible
    topologies"); `preferred` only orders choices, and a node-local driver has one. A requisite topology
    names this node when its segments are exactly this node's: a segment with a key this driver does not
    report cannot be checked, so it is not taken as met.
    """
    if requirement is None or not requirement.requisite:
        return True
    return any(dict(topology.segments) == here for topology in requirement.requisite)


# ---- a given block device (pre-provisioned volume) -----------------------------------------------------------

def device_filesystem(probed: dict[str, str], device: str, wanted: str, allow_format: bool,
                      fs_types=SUPPORTED_FS_TYPES) -> tuple[str, bool]:
    """(fs type to mount, whether to format first) for a given block device, from what `blkid -p` found.

    `probed` is blkid's export (TYPE, USAGE, PTTYPE, ...; empty when the device holds no signature at all).
    A filesystem this driver mounts is used as it is; anything else (a partition table, LVM, swap, LUKS, another
    filesystem) is refused; a blank device is formatted only when the volume asks for it (`format: "true"`).
    """
    found = probed.get("TYPE", "")
    if found and probed.get("USAGE", "filesystem") == "filesystem" and found in fs_types:
        if wanted and wanted != found:
            raise InvalidInput(f"device {device} holds {found}, not {wanted}")
        return found, False
    what = {key: value for key, value in probed.items() if key in ("TYPE", "USAGE", "PTTYPE")}
    if probed:
        shown = ", ".join(f"{key}={value}" for key, value in sorted(what.items())) or "an unknown signature"
        raise DeviceUnusable(f"device {device} holds {shown}, not an {' or '.join(fs_types)} filesystem; this "
                             f"driver neither mounts nor overwrites it")
    if not allow_format:
        raise DeviceUnusable(f"device {device} holds no filesystem; it is not formatted unless the volume's "
                             f"volume_context has format: \"true\"")
    fs_type = wanted or DEFAULT_FS_TYPE
    if fs_type not in fs_types:
        raise InvalidInput(f"fs_type {fs_type!r} is not supported; use one of {', '.join(fs_types)}")
    return fs_type, True
