from agent.rbac.attributes import non_resource_request as nr, resource_request as rr


def test_described_and_as_json():
    request = rr("get", "apps", "deployments", "scale", "shop", "web")
    assert request.combined_resource == "deployments/scale"
    assert request.describe() == "get apps deployments/scale web in shop"
    assert request.to_json() == {"verb": "get", "apiGroup": "apps", "resource": "deployments/scale",
                                 "namespace": "shop", "name": "web"}
    assert rr("list", "", "nodes").describe() == "list nodes (cluster-wide)"
    assert rr("list", "", "nodes").to_json() == {"verb": "list", "apiGroup": "", "resource": "nodes"}
    assert nr("get", "/healthz").describe() == "get /healthz"
    assert nr("get", "/healthz").to_json() == {"verb": "get", "nonResourceURL": "/healthz"}


def test_values_compare_and_hash_by_every_field():
    assert rr("get", "", "pods", name="a") == rr("get", "", "pods", name="a")
    assert len({rr("get", "", "pods", name="a"), rr("get", "", "pods", name="b"), nr("get", "/a")}) == 3
