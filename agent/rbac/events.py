"""Audit events (audit.k8s.io v1, v1beta1, v1alpha1) as far as RBAC needs them, and the request each one
records.

Each JSON line is decoded straight into a msgspec Struct that names only the fields read here; msgspec
skips the rest (request and response bodies at the RequestResponse level) without building them, which is
what makes a line cost microseconds. The three API versions share these field names.
"""

from __future__ import annotations

import msgspec

from agent.rbac.attributes import Request, resource_request
from agent.rbac.requestinfo import request_from_uri

AUDIT_API_VERSIONS = frozenset({"audit.k8s.io/v1", "audit.k8s.io/v1beta1", "audit.k8s.io/v1alpha1"})
# The stages after which a request is over; earlier ones (RequestReceived, ResponseStarted) count only when
# no final stage of the same auditID is ever seen.
FINAL_STAGES = frozenset({"ResponseComplete", "Panic"})
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


class UserInfo(msgspec.Struct, gc=False):
    username: str


class ObjectReference(msgspec.Struct, gc=False):
    resource: str = ""
    namespace: str = ""
    name: str = ""
    apiGroup: str = ""
    subresource: str = ""


class Event(msgspec.Struct, gc=False):
    kind: str
    apiVersion: str
    auditID: str
    stage: str
    requestURI: str
    verb: str
    user: UserInfo
    impersonatedUser: UserInfo | None = None
    objectRef: ObjectReference | None = None


class NotAnEvent(ValueError):
    """A line that is not an audit Event RBAC can use; the message says why in a few words."""


_DECODER = msgspec.json.Decoder(Event)


def decode(line: bytes) -> Event:
    """The Event on one JSON line; NotAnEvent for anything else."""
    try:
        event = _DECODER.decode(line)
    except msgspec.ValidationError as err:
        raise NotAnEvent(f"not an audit Event: {err}") from None
    except msgspec.DecodeError as err:
        raise NotAnEvent(f"not JSON: {err}") from None
    if event.kind != "Event" or event.apiVersion not in AUDIT_API_VERSIONS:
        raise NotAnEvent(f"not an audit Event: kind {event.kind!r}, apiVersion {event.apiVersion!r}")
    if not event.verb or not event.user.username or not event.auditID:
        missing = [field for field, value in (("verb", event.verb), ("user.username", event.user.username),
                                              ("auditID", event.auditID)) if not value]
        raise NotAnEvent(f"not an audit Event: empty {', '.join(missing)}")
    return event


def request_of(event: Event) -> Request:
    """The attributes the authorizer saw for this event's request.

    objectRef is the API server's own reading of the URL; the name it holds for a `create` comes from the
    created object, which the authorizer never saw (a POST to a collection names nothing), so it is dropped
    unless the URL itself named the object (a subresource such as pods/eviction). Without objectRef the
    request URI is read as the API server reads it (requestinfo)."""
    ref = event.objectRef
    if ref is None or not ref.resource:
        return request_from_uri(event.verb, event.requestURI)
    name = ref.name
    if event.verb == "create" and not ref.subresource:
        name = ""
    return resource_request(event.verb, ref.apiGroup, ref.resource, ref.subresource, ref.namespace, name)


def service_account_username(namespace: str, name: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
