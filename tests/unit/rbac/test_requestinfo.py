"""URL -> attributes as the API server's requestinfo reads them: one row per rule."""

import pytest

from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.requestinfo import request_from_uri

CASES = [
    # non-resource paths: too short, or not under an API prefix; the verb is the lower-case method
    ("GET", "/healthz", nr("get", "/healthz")),
    ("GET", "/version?timeout=32s", nr("get", "/version")),
    ("GET", "/", nr("get", "/")),
    ("GET", "/api", nr("get", "/api")),
    ("GET", "/api/v1", nr("get", "/api/v1")),
    ("GET", "/apis/apps/v1", nr("get", "/apis/apps/v1")),
    ("GET", "/apis/apps", nr("get", "/apis/apps")),
    ("POST", "/logs/kube.log", nr("post", "/logs/kube.log")),
    ("GET", "/metrics/cadvisor", nr("get", "/metrics/cadvisor")),
    # core group, cluster-scoped and namespaced, get vs list
    ("GET", "/api/v1/nodes", rr("list", "", "nodes")),
    ("GET", "/api/v1/nodes/n1", rr("get", "", "nodes", name="n1")),
    ("GET", "/api/v1/pods", rr("list", "", "pods")),
    ("GET", "/api/v1/namespaces/shop/pods", rr("list", "", "pods", namespace="shop")),
    ("GET", "/api/v1/namespaces/shop/pods/web-1", rr("get", "", "pods", namespace="shop", name="web-1")),
    ("HEAD", "/api/v1/namespaces/shop/pods/web-1", rr("get", "", "pods", namespace="shop", name="web-1")),
    # watch from ?watch= (first value; anything but 0/false is true), and the legacy /watch/ prefix
    ("GET", "/api/v1/namespaces/shop/pods?watch=true", rr("watch", "", "pods", namespace="shop")),
    ("GET", "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn1", rr("watch", "", "pods")),
    ("GET", "/api/v1/pods?watch=yes", rr("watch", "", "pods")),
    ("GET", "/api/v1/pods?watch=", rr("watch", "", "pods")),
    ("GET", "/api/v1/pods?watch=false", rr("list", "", "pods")),
    ("GET", "/api/v1/pods?watch=0&watch=1", rr("list", "", "pods")),
    ("GET", "/api/v1/pods?watch=FALSE", rr("list", "", "pods")),
    ("GET", "/api/v1/watch/namespaces/shop/pods", rr("watch", "", "pods", namespace="shop")),
    ("GET", "/api/v1/watch/pods/web-1", rr("watch", "", "pods", name="web-1")),
    # a fieldSelector pinning metadata.name names the object for list and watch
    ("GET", "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3Dcfg",
     rr("list", "", "configmaps", namespace="shop", name="cfg")),
    ("GET", "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3D%3Dcfg&watch=true",
     rr("watch", "", "configmaps", namespace="shop", name="cfg")),
    ("GET", "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name!%3Dcfg",
     rr("list", "", "configmaps", namespace="shop")),
    ("GET", "/api/v1/configmaps?fieldSelector=metadata.namespace%3Dx,metadata.name%3Dcfg",
     rr("list", "", "configmaps", name="cfg")),
    ("GET", "/api/v1/configmaps?fieldSelector=metadata.name%3Da%2Fb", rr("list", "", "configmaps")),
    # named groups
    ("GET", "/apis/apps/v1/namespaces/shop/deployments", rr("list", "apps", "deployments", namespace="shop")),
    ("GET", "/apis/storage.k8s.io/v1/csidrivers", rr("list", "storage.k8s.io", "csidrivers")),
    ("GET", "/apis/storage.k8s.io/v1beta1/csidrivers/d", rr("get", "storage.k8s.io", "csidrivers", name="d")),
    # methods -> verbs; delete without a name is deletecollection
    ("POST", "/api/v1/namespaces/shop/events", rr("create", "", "events", namespace="shop")),
    ("PUT", "/api/v1/namespaces/shop/configmaps/c", rr("update", "", "configmaps", namespace="shop", name="c")),
    ("PATCH", "/api/v1/namespaces/shop/configmaps/c", rr("patch", "", "configmaps", namespace="shop", name="c")),
    ("DELETE", "/api/v1/namespaces/shop/configmaps/c", rr("delete", "", "configmaps", namespace="shop", name="c")),
    ("DELETE", "/api/v1/namespaces/shop/configmaps", rr("deletecollection", "", "configmaps", namespace="shop")),
    ("DELETE", "/api/v1/namespaces/shop/configmaps?labelSelector=a%3Db",
     rr("deletecollection", "", "configmaps", namespace="shop")),
    ("OPTIONS", "/api/v1/namespaces/shop/configmaps/c", rr("", "", "configmaps", namespace="shop", name="c")),
    # subresources
    ("GET", "/api/v1/namespaces/shop/pods/web-1/log", rr("get", "", "pods", "log", "shop", "web-1")),
    ("POST", "/api/v1/namespaces/shop/pods/web-1/eviction", rr("create", "", "pods", "eviction", "shop", "web-1")),
    ("PUT", "/apis/apps/v1/namespaces/shop/deployments/web/scale",
     rr("update", "apps", "deployments", "scale", "shop", "web")),
    ("GET", "/api/v1/namespaces/shop/pods/web-1/log/extra/parts", rr("get", "", "pods", "log", "shop", "web-1")),
    # proxy takes no subresource
    ("GET", "/api/v1/proxy/namespaces/shop/pods/web-1/some/path", rr("proxy", "", "pods", "", "shop", "web-1")),
    # namespaces themselves, and their status/finalize subresources
    ("GET", "/api/v1/namespaces", rr("list", "", "namespaces")),
    ("GET", "/api/v1/namespaces/shop", rr("get", "", "namespaces", namespace="shop", name="shop")),
    ("PUT", "/api/v1/namespaces/shop/finalize", rr("update", "", "namespaces", "finalize", "shop", "shop")),
    ("PUT", "/api/v1/namespaces/shop/status", rr("update", "", "namespaces", "status", "shop", "shop")),
    # an audit event may carry the API server's verb already
    ("list", "/api/v1/namespaces/shop/pods", rr("list", "", "pods", namespace="shop")),
    ("watch", "/api/v1/namespaces/shop/pods?watch=1", rr("watch", "", "pods", namespace="shop")),
    ("deletecollection", "/api/v1/namespaces/shop/pods", rr("deletecollection", "", "pods", namespace="shop")),
    ("create", "/api/v1/namespaces/shop/events", rr("create", "", "events", namespace="shop")),
    ("get", "/api/v1/namespaces/shop/pods", rr("list", "", "pods", namespace="shop")),
    # the legacy prefix with nothing after it is not a resource request
    ("GET", "/api/v1/watch", nr("get", "/api/v1/watch")),
]


@pytest.mark.parametrize("method,uri,expected", CASES, ids=[f"{m} {u}" for m, u, _ in CASES])
def test_request_from_uri(method, uri, expected):
    assert request_from_uri(method, uri) == expected


def test_paths_are_read_without_query_or_fragment():
    assert request_from_uri("get", "/healthz?verbose#x").path == "/healthz"
    assert request_from_uri("get", "/healthz/etcd").path == "/healthz/etcd"
