"""Streaming the subject's requests out of audit lines: subject, stages, namespace, bad lines."""

from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.recorder import LINE_TOO_LONG, Recorder
from audit_events import event, line, lines, ref

SA = "system:serviceaccount:shop:web"


def record(*events, namespace=None):
    bad = []
    recorder = Recorder(SA, namespace, bad.append).feed_all(lines(*events))
    return recorder, recorder.finish(), bad


def test_only_the_subjects_requests_and_impersonations_of_it():
    _, requests, _ = record(event(uri="/healthz"), event(user="jane", uri="/version"),
                            event(user="jane", impersonated=SA, uri="/readyz"),
                            event(impersonated="jane", uri="/livez"))
    assert requests == {nr("get", "/healthz"): 1, nr("get", "/readyz"): 1}


def test_a_request_counts_once_at_its_final_stage():
    watch = dict(verb="watch", uri="/api/v1/pods?watch=1", ref=ref("pods"))
    _, requests, _ = record(event(stage="RequestReceived", audit_id="a", **watch),
                            event(stage="ResponseStarted", audit_id="a", **watch),
                            event(stage="ResponseComplete", audit_id="a", **watch))
    assert requests == {rr("watch", "", "pods"): 1}


def test_without_a_final_stage_the_last_one_seen_counts():
    recorder, requests, _ = record(
        event(stage="RequestReceived", audit_id="a", verb="list", uri="/api/v1/nodes", ref=ref("nodes")),
        event(stage="ResponseStarted", audit_id="b", verb="watch", uri="/api/v1/pods?watch=1", ref=ref("pods")),
        event(stage="Panic", audit_id="c", verb="get", uri="/api/v1/nodes/n", ref=ref("nodes", name="n")))
    assert requests == {rr("list", "", "nodes"): 1, rr("watch", "", "pods"): 1, rr("get", "", "nodes", name="n"): 1}
    assert recorder.used == 3


def test_denied_requests_count_too():
    forbidden = event(verb="list", uri="/api/v1/secrets", ref=ref("secrets"),
                      responseStatus={"code": 403, "status": "Failure", "reason": "Forbidden"},
                      annotations={"authorization.k8s.io/decision": "forbid"})
    _, requests, _ = record(forbidden)
    assert requests == {rr("list", "", "secrets"): 1}


def test_namespace_keeps_only_requests_in_it():
    _, requests, _ = record(event(verb="list", uri="/api/v1/namespaces/a/pods", ref=ref("pods", "a")),
                            event(verb="list", uri="/api/v1/namespaces/b/pods", ref=ref("pods", "b")),
                            event(verb="list", uri="/api/v1/pods", ref=ref("pods")), event(uri="/healthz"),
                            namespace="a")
    assert requests == {rr("list", "", "pods", namespace="a"): 1}


def test_bad_lines_are_counted_and_named_by_line_number():
    recorder, requests, bad = record(event(uri="/healthz"), b"garbage\n", b"\n", b'{"kind": "Event"}\n',
                                     event(uri="/healthz"))
    assert requests == {nr("get", "/healthz"): 2}
    assert (recorder.lines, recorder.events, recorder.bad) == (5, 2, 2)
    assert [(b.source, b.line) for b in bad] == [("log", 2), ("log", 4)]
    assert str(bad[0]).startswith("log:2: not JSON")


def test_lines_are_numbered_per_source():
    bad = []
    recorder = Recorder(SA, None, bad.append).feed_all([("a.log", [line(event()), b"x\n"]), ("b.log", [b"y\n"])])
    assert [str(b).split(": ")[0] for b in bad] == ["a.log:2", "b.log:1"]
    assert recorder.lines == 3


def test_a_line_too_long_is_reported_as_such():
    bad = []
    Recorder(SA, None, bad.append).feed_all([("a.log", [LINE_TOO_LONG])])
    assert [str(b) for b in bad] == ["a.log:1: line too long, skipped unread"]
