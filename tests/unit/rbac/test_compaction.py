"""Compaction: the fewest rules, exactly the recorded requests (property-tested through the evaluator), and
the widening audit2rbac's --expand-multi-* flags ask for."""

from hypothesis import given, settings, strategies as st

from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.compaction import Options, compact, url_rule_path
from agent.rbac.evaluator import allowed
from agent.rbac.policy_rule import PolicyRule
from agent.rbac.rbac_objects import grants_for
from agent.rbac.recorder import Recorder
from agent.rbac.render import render
from agent.rbac.subject import Subject
from audit_events import event, lines, ref

SUBJECTS = [Subject("ServiceAccount", "web", "shop"), Subject("ServiceAccount", "db", "shop"), Subject("User", "jane")]


def test_verbs_merge_per_resource_and_resources_per_verb_set():
    scopes = compact([rr("get", "", "pods", namespace="a"), rr("list", "", "pods", namespace="a"),
                      rr("get", "", "configmaps", namespace="a"), rr("list", "", "configmaps", namespace="a"),
                      rr("watch", "", "pods", namespace="a"), rr("list", "apps", "deployments", namespace="a")])
    assert scopes == {"a": [
        PolicyRule(("get", "list"), ("",), ("configmaps",)),
        PolicyRule(("get", "list", "watch"), ("",), ("pods",)),
        PolicyRule(("list",), ("apps",), ("deployments",)),
    ]}


def test_names_merge_and_an_unnamed_request_covers_the_named_ones():
    scopes = compact([rr("get", "", "secrets", namespace="a", name="x"), rr("get", "", "secrets", namespace="a", name="y"),
                      rr("get", "", "configmaps", namespace="a", name="x"), rr("get", "", "configmaps", namespace="a", name="y"),
                      rr("get", "", "nodes", name="n1"), rr("get", "", "nodes")])
    assert scopes == {"": [PolicyRule(("get",), ("",), ("nodes",))],
                      "a": [PolicyRule(("get",), ("",), ("configmaps", "secrets"), ("x", "y"))]}


def test_cluster_wide_rules_cover_the_namespaced_ones():
    scopes = compact([rr("list", "", "pods"), rr("list", "", "pods", namespace="a"), rr("get", "", "pods", namespace="a", name="p")])
    assert scopes == {"": [PolicyRule(("list",), ("",), ("pods",))],
                      "a": [PolicyRule(("get",), ("",), ("pods",), ("p",))]}


def test_subresources_and_non_resource_urls():
    scopes = compact([rr("get", "", "pods", "log", "a", "p"), rr("create", "", "pods", "eviction", "a", "p"),
                      nr("get", "/healthz"), nr("get", "/version"), nr("post", "/logs/x"), nr("get", "/apis/apps/v1"),
                      nr("get", "/api"), nr("get", "/openapi/v2")])
    assert scopes["a"] == [PolicyRule(("create",), ("",), ("pods/eviction",), ("p",)),
                           PolicyRule(("get",), ("",), ("pods/log",), ("p",))]
    assert scopes[""] == [PolicyRule(("get",), non_resource_urls=("/api*", "/healthz", "/openapi*", "/version")),
                          PolicyRule(("post",), non_resource_urls=("/logs/x",))]


def test_discovery_urls_take_audit2rbacs_trailing_star():
    assert [url_rule_path(p) for p in ("/api", "/apis/apps/v1", "/openapi/v3", "/swagger.json", "/healthz", "/metrics")] == [
        "/api*", "/api*", "/openapi*", "/swagger*", "/healthz", "/metrics"]


def test_expand_multi_name_and_namespace():
    requests = [rr("get", "", "secrets", namespace="a", name="x"), rr("get", "", "secrets", namespace="a", name="y"),
                rr("get", "", "configmaps", namespace="a", name="x"),
                rr("list", "", "pods", namespace="a"), rr("list", "", "pods", namespace="b"),
                rr("watch", "", "pods", namespace="a")]
    assert compact(requests, Options(expand_multi_name=True)) == {
        "a": [PolicyRule(("get",), ("",), ("configmaps",), ("x",)), PolicyRule(("list", "watch"), ("",), ("pods",)),
              PolicyRule(("get",), ("",), ("secrets",))],
        "b": [PolicyRule(("list",), ("",), ("pods",))]}
    assert compact(requests, Options(expand_multi_namespace=True)) == {
        "": [PolicyRule(("list",), ("",), ("pods",))],
        "a": [PolicyRule(("get",), ("",), ("configmaps",), ("x",)), PolicyRule(("watch",), ("",), ("pods",)),
              PolicyRule(("get",), ("",), ("secrets",), ("x", "y"))]}


def test_same_input_same_output_whatever_the_order():
    requests = [rr(v, g, r, namespace=ns, name=n) for v in ("get", "list") for g in ("", "apps")
                for r in ("pods", "deployments") for ns in ("", "a") for n in ("", "x")]
    assert compact(requests) == compact(list(reversed(requests)))


# --- property: through events, recorder, compaction, rendering and back, the evaluator allows every request the
# subject made and, of other subjects' requests, only those one of its own covers (the same request; any name
# when it named none, any namespace when it was cluster-wide: RBAC cannot say less; discovery URLs under a
# trailing *, as documented).

VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
resource_requests = st.builds(
    lambda verb, group, resource, sub, namespace, name: (verb, group, resource, sub, namespace, name),
    st.sampled_from(VERBS), st.sampled_from(["", "apps"]), st.sampled_from(["pods", "configmaps", "deployments"]),
    st.sampled_from(["", "", "status", "log"]), st.sampled_from(["", "a", "b"]), st.sampled_from(["", "x", "y"]))
url_requests = st.tuples(st.sampled_from(["get", "post"]),
                         st.sampled_from(["/healthz", "/metrics", "/logs/x", "/apis/apps/v1", "/api/v1", "/version"]))
made = st.lists(st.tuples(st.sampled_from(range(len(SUBJECTS))), st.one_of(resource_requests, url_requests)),
                min_size=1, max_size=40)


def _event(subject, what):
    if len(what) == 2:
        verb, path = what
        return event(user=subject.username, verb=verb, uri=path)
    verb, group, resource, sub, namespace, name = what
    uri = f"/apis/{group or 'core'}/v1/{resource}"  # objectRef is what counts
    return event(user=subject.username, verb=verb, uri=uri, ref=ref(resource, namespace, name, group, sub))


def _recorded(events, subject):
    return set(Recorder(subject.username).feed_all(lines(*events)).finish())


def _covers(mine, other, widen_names=False, widen_namespaces=False) -> bool:
    """Does the subject's own request `mine` cover `other`? RBAC has no rule for "only without a name" or "only
    cluster-wide": a request made without a name covers every name, one made cluster-wide every namespace."""
    if mine.resource_request != other.resource_request:
        return False
    if not mine.resource_request:
        return mine.verb == other.verb and url_rule_path(mine.path) == url_rule_path(other.path)
    if widen_names or not mine.name:
        mine, other = mine._replace(name=""), other._replace(name="")
    if widen_namespaces or not mine.namespace:
        mine, other = mine._replace(namespace=""), other._replace(namespace="")
    return mine == other


@settings(max_examples=150, deadline=None)
@given(made, st.booleans(), st.booleans())
def test_generated_rbac_allows_exactly_what_the_subject_did(made, widen_names, widen_namespaces):
    events = [_event(SUBJECTS[who], what) for who, what in made]
    subject = SUBJECTS[made[0][0]]
    own = _recorded(events, subject)
    objects = render(compact(own, Options(widen_names, widen_namespaces)), subject, "generated")
    grants = grants_for(objects, subject).grants
    for request in own:
        assert allowed(grants, request), request
    for other in SUBJECTS:
        if other == subject:
            continue
        assert not grants_for(objects, other).grants  # bound to the subject alone
        for request in _recorded(events, other):
            expected = any(_covers(mine, request, widen_names, widen_namespaces) for mine in own)
            if not widen_names and not widen_namespaces:
                assert allowed(grants, request) == expected, request
            elif not expected:
                assert not allowed(grants, request), request
