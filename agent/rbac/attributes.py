"""The request attributes RBAC decides on: what the API server's authorizer is asked about one request.

A value small enough to be a set member: `rbac generate` keeps one per distinct request, never one per event,
which is what keeps a 1 GB audit log out of memory.
"""

from __future__ import annotations

from typing import NamedTuple


class Request(NamedTuple):
    """authorizer.Attributes as RBAC reads them. A resource request names a version-independent resource
    (`pods`, with `subresource` apart); a non-resource request has only the URL path and the lower-case HTTP
    method as its verb."""

    verb: str
    resource_request: bool
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined_resource(self) -> str:
        """`resource/subresource`, the form RBAC rules name subresources in."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        """One line for people: `list pods in ns`, `get storage.k8s.io csidrivers`, `get /healthz`."""
        if not self.resource_request:
            return f"{self.verb} {self.path}"
        words = [self.verb]
        if self.api_group:
            words.append(self.api_group)
        words.append(self.combined_resource)
        if self.name:
            words.append(self.name)
        words.append(f"in {self.namespace}" if self.namespace else "(cluster-wide)")
        return " ".join(words)

    def to_json(self) -> dict:
        if not self.resource_request:
            return {"verb": self.verb, "nonResourceURL": self.path}
        out = {"verb": self.verb, "apiGroup": self.api_group, "resource": self.combined_resource}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.name:
            out["name"] = self.name
        return out


def resource_request(verb: str, api_group: str, resource: str, subresource: str = "", namespace: str = "",
                     name: str = "") -> Request:
    return Request(verb, True, api_group, resource, subresource, namespace, name, "")


def non_resource_request(verb: str, path: str) -> Request:
    return Request(verb, False, "", "", "", "", "", path)
