"""Who the RBAC is for: a service account (`NS:NAME`) or a user, with the username the API server gives it
and the groups every such identity is in."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import InvalidInput
from agent.rbac.events import service_account_username

RBAC_GROUP = "rbac.authorization.k8s.io"
# A namespace and a service account name: DNS labels / subdomains as the API server validates them.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SA_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class Subject:
    kind: str  # ServiceAccount or User
    name: str
    namespace: str = ""

    @property
    def username(self) -> str:
        if self.kind == "ServiceAccount":
            return service_account_username(self.namespace, self.name)
        return self.name

    @property
    def groups(self) -> frozenset[str]:
        """The groups the authenticator adds (system:authenticated always; a service account's own two)."""
        if self.kind == "ServiceAccount":
            return frozenset({"system:authenticated", "system:serviceaccounts",
                              f"system:serviceaccounts:{self.namespace}"})
        return frozenset({"system:authenticated"})

    def to_json(self) -> dict:
        """The binding subject that names it."""
        if self.kind == "ServiceAccount":
            return {"kind": "ServiceAccount", "name": self.name, "namespace": self.namespace}
        return {"kind": "User", "apiGroup": RBAC_GROUP, "name": self.name}

    def bound_by(self, subject) -> bool:
        """Does this binding subject (an object's `subjects` item) name us? As the RBAC authorizer decides."""
        if not isinstance(subject, dict):
            return False
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "ServiceAccount":
            return self.kind == "ServiceAccount" and name == self.name and subject.get("namespace") == self.namespace
        if kind == "User":
            return name == self.username
        if kind == "Group":
            return name in self.groups
        return False

    def __str__(self) -> str:
        return self.username


def service_account(text: str) -> Subject:
    """`NS:NAME` from the command line."""
    namespace, sep, name = text.partition(":")
    if not sep or not _NAMESPACE.fullmatch(namespace) or not _SA_NAME.fullmatch(name):
        raise InvalidInput(f"--serviceaccount {text!r}: expected NAMESPACE:NAME (lower-case DNS names)")
    return Subject("ServiceAccount", name, namespace)


def user(text: str) -> Subject:
    if not text or any(ord(c) < 32 for c in text):
        raise InvalidInput(f"--user {text!r}: expected a user name")
    if text.startswith("system:serviceaccount:"):
        rest = text[len("system:serviceaccount:"):]
        return service_account(rest)
    return Subject("User", text)
