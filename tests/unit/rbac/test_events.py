"""Audit Event lines -> the request the authorizer saw, for each attribute rule."""

import json

import pytest

from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.events import NotAnEvent, decode, request_of
from audit_events import event, line, ref

CASES = [
    ("get named", event(verb="get", uri="/api/v1/namespaces/shop/pods/p", ref=ref("pods", "shop", "p")),
     rr("get", "", "pods", namespace="shop", name="p")),
    ("list", event(verb="list", uri="/api/v1/namespaces/shop/pods", ref=ref("pods", "shop")),
     rr("list", "", "pods", namespace="shop")),
    ("watch", event(verb="watch", uri="/api/v1/pods?watch=true", ref=ref("pods")), rr("watch", "", "pods")),
    ("group and version-independent resource",
     event(verb="list", uri="/apis/storage.k8s.io/v1beta1/csidrivers", ref=ref("csidrivers", group="storage.k8s.io",
                                                                              version="v1beta1")),
     rr("list", "storage.k8s.io", "csidrivers")),
    ("subresource", event(verb="update", uri="/apis/apps/v1/namespaces/shop/deployments/web/scale",
                          ref=ref("deployments", "shop", "web", "apps", "scale")),
     rr("update", "apps", "deployments", "scale", "shop", "web")),
    ("create: the created object's name was not authorized",
     event(verb="create", uri="/api/v1/namespaces/shop/events", ref=ref("events", "shop", "e.1")),
     rr("create", "", "events", namespace="shop")),
    ("create on a subresource: the URL names the object",
     event(verb="create", uri="/api/v1/namespaces/shop/pods/p/eviction", ref=ref("pods", "shop", "p", subresource="eviction")),
     rr("create", "", "pods", "eviction", "shop", "p")),
    ("deletecollection", event(verb="deletecollection", uri="/api/v1/namespaces/shop/pods", ref=ref("pods", "shop")),
     rr("deletecollection", "", "pods", namespace="shop")),
    ("non-resource", event(verb="get", uri="/healthz"), nr("get", "/healthz")),
    ("non-resource with a query", event(verb="get", uri="/version?timeout=32s"), nr("get", "/version")),
    ("non-resource post", event(verb="post", uri="/logs/x"), nr("post", "/logs/x")),
    ("discovery", event(verb="get", uri="/apis/apps/v1"), nr("get", "/apis/apps/v1")),
    ("no objectRef: the URI is read", event(verb="get", uri="/api/v1/namespaces/shop/pods?watch=1"),
     rr("watch", "", "pods", namespace="shop")),
    ("no objectRef, a method verb", event(verb="delete", uri="/api/v1/namespaces/shop/pods"),
     rr("deletecollection", "", "pods", namespace="shop")),
    ("objectRef without a resource", event(verb="get", uri="/api/v1/nodes/n", ref={"apiVersion": "v1"}),
     rr("get", "", "nodes", name="n")),
    ("v1beta1", event(version="v1beta1", verb="get", uri="/api/v1/nodes/n", ref=ref("nodes", name="n")),
     rr("get", "", "nodes", name="n")),
    ("v1alpha1", event(version="v1alpha1", verb="list", uri="/api/v1/nodes", ref=ref("nodes")), rr("list", "", "nodes")),
]


@pytest.mark.parametrize("why,obj,expected", CASES, ids=[c[0] for c in CASES])
def test_request_of(why, obj, expected):
    assert request_of(decode(line(obj))) == expected


def test_bodies_and_unknown_fields_are_skipped():
    obj = event(verb="create", uri="/api/v1/namespaces/shop/configmaps", ref=ref("configmaps", "shop"),
                requestObject={"kind": "ConfigMap", "data": {"k": "v" * 1000}}, future={"field": [1, 2]})
    assert request_of(decode(line(obj))) == rr("create", "", "configmaps", namespace="shop")


BAD = [
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "not an audit Event"),
    (b'{"kind": "Event"}\n', "not an audit Event"),
    (line({**event(), "kind": "Pod"}), "kind 'Pod'"),
    (line({**event(), "apiVersion": "v1"}), "apiVersion 'v1'"),
    (line({k: v for k, v in event().items() if k != "verb"}), "verb"),
    (line({k: v for k, v in event().items() if k != "auditID"}), "auditID"),
    (line({**event(), "user": {}}), "username"),
    (line({**event(), "user": {"username": ""}}), "user.username"),
    (line({**event(), "objectRef": "pods"}), "objectRef"),
    (line({**event(), "verb": 7}), "verb"),
    (b'{"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "x", "stage"', "not JSON"),
]


@pytest.mark.parametrize("text,why", BAD, ids=[w for _, w in BAD])
def test_what_is_not_an_event_says_why(text, why):
    with pytest.raises(NotAnEvent) as caught:
        decode(text)
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_an_event_list_line_is_not_an_event():
    with pytest.raises(NotAnEvent):
        decode(json.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []}).encode())
