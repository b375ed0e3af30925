"""One error hierarchy for the whole project.

Every error a user can cause is an `AgentError`; the CLI maps them to exit code 2 and the CSI server maps
them to gRPC codes, each in one place. `code` names the CSI status that fits the error.
"""


class AgentError(Exception):
    """Base of every error the project raises on purpose."""

    code = "INTERNAL"


class InvalidInput(AgentError):
    """Input that cannot be used as given (files, flags, objects)."""

    code = "INVALID_ARGUMENT"


class InvalidLabel(InvalidInput):
    """An SELinux context, or a part of one, that fails the grammar or the policy check."""

    def __init__(self, field: str, value, why: str):
        self.field = field
        self.value = value
        self.why = why
        shown = value if isinstance(value, str) and len(value) <= 200 else f"{str(value)[:200]}..."
        super().__init__(f"invalid SELinux {field} {shown!r}: {why}")


class InvalidManifest(InvalidInput):
    """A Kubernetes object that cannot be read, or a reference that does not resolve."""


class VolumeNotResolved(InvalidManifest):
    """A pod volume that cannot be followed to its volume: a claim, PV or StorageClass missing from the input, or
    an in-tree source CSI migration cannot translate. Upstream's controller reports it and goes on with the pod's
    other volumes, so the cluster-wide views report it with the pod instead of refusing the input."""


class InvalidFeatureGates(InvalidInput):
    """A feature-gate setting kubelet itself would refuse (unknown gate, locked gate, bad version)."""


class PathOutsideRoot(AgentError):
    """A path that is not below the roots the agent is allowed to touch."""

    code = "INVALID_ARGUMENT"


class LabelConflict(AgentError):
    """A volume already mounted with another SELinux context, or used with two labels."""

    code = "FAILED_PRECONDITION"


class SELinuxUnavailable(AgentError):
    """A step that needs SELinux on this node, where it has none."""

    code = "FAILED_PRECONDITION"


class RelabelFailed(AgentError):
    """A recursive relabel that cannot go on: the volume's filesystem is read-only, keeps no SELinux labels,
    or its root cannot be opened. `errno` and `path` say what failed where."""

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, errno: int | None = None, path: bytes | None = None):
        self.errno = errno
        self.path = path
        super().__init__(message)


class AuditUnavailable(AgentError):
    """The kernel audit stream cannot be read here (no CAP_AUDIT_READ, no audit support, missing log)."""

    code = "FAILED_PRECONDITION"


class InvalidModuleName(InvalidInput):
    """An SELinux policy module name that checkmodule or semodule would refuse, or that could escape a path."""


class PolicyBuildError(AgentError):
    """checkmodule, semodule_package or semodule failed, or a tool they need is missing."""

    code = "FAILED_PRECONDITION"


class VolumeNotFound(AgentError):
    """A CSI volume id (or a path that should hold it) this node plugin does not know."""

    code = "NOT_FOUND"


class VolumeAlreadyExists(AgentError):
    """A CSI request for a volume that exists, or is staged or published, with incompatible arguments."""

    code = "ALREADY_EXISTS"


class VolumeInUse(AgentError):
    """A CSI step that cannot run yet: the volume is not staged, still published, or used elsewhere."""

    code = "FAILED_PRECONDITION"


class ContextNotApplied(AgentError):
    """A `context=` mount whose label is not what mountinfo shows, with no fallback allowed or possible."""

    code = "FAILED_PRECONDITION"


class CapacityOutOfRange(AgentError):
    """A capacity range the CSI driver cannot satisfy."""

    code = "OUT_OF_RANGE"


class MountFailed(AgentError):
    """mount(2), umount(2), a loop device or mkfs failed; the message carries the errno text."""

    code = "INTERNAL"

    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        super().__init__(message)


class BackendError(AgentError):
    """An error returned by the CSI node plugin behind the shim; `code` is the backend's own status."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class StateInvalid(AgentError):
    """A CSI shim state file that cannot be trusted (damaged, foreign, or missing while its volumes exist).
    The shim does not start on it and leaves it as it is: starting empty would forget mounted volumes."""

    code = "INTERNAL"

    def __init__(self, path: str, why: str):
        self.path = path
        self.why = why
        super().__init__(f"state file {path}: {why}; it is left as it is and the shim does not start: run "
                         f"`selinux-mount-agent csi --recover-state` with this node's flags to set it aside and "
                         f"rebuild the state from the volume images and mounts")
