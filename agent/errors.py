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
