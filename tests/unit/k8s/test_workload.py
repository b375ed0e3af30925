"""agent/k8s/workload.py: the workload a pod belongs to, from the owner objects when the input has them, from their
naming otherwise. The audit groups pods by it and AVC attribution names a denial's workload by it."""

import pytest

from agent.errors import InvalidManifest
from agent.k8s.resolve import Cluster
from agent.k8s.workload import Workload, workload_of
from k8s_builders import owned, pod


def of(facts, cluster=None):
    return workload_of(facts.namespace, facts.name, facts.owners, facts.labels,
                       cluster.other if cluster is not None else None)


@pytest.mark.parametrize("kind, owner, labels, expected", [
    # A Deployment's ReplicaSet is <deployment>-<pod-template-hash>.
    ("ReplicaSet", "web-5d4f", {"pod-template-hash": "5d4f"}, Workload("Deployment", "ns", "web", inferred=True)),
    # Without a matching hash label the ReplicaSet is the workload: its name is not guessed at.
    ("ReplicaSet", "web-5d4f8c7b9", {}, Workload("ReplicaSet", "ns", "web-5d4f8c7b9")),
    ("ReplicaSet", "web-5d4f", {"pod-template-hash": "other"}, Workload("ReplicaSet", "ns", "web-5d4f")),
    # A CronJob's Job is <cronjob>-<scheduled minute>.
    ("Job", "backup-28999999", {}, Workload("CronJob", "ns", "backup", inferred=True)),
    ("Job", "backup-1234567", {}, Workload("Job", "ns", "backup-1234567")),
    ("StatefulSet", "db", {}, Workload("StatefulSet", "ns", "db")),
])
def test_owners_missing_from_the_input_are_inferred_from_their_names(kind, owner, labels, expected):
    found = of(Cluster([]).resolve_pod(owned(pod(volumes=[]), kind, owner, labels)))
    assert (found, found.inferred) == (expected, expected.inferred)


def test_a_pod_without_owner_is_its_own_workload():
    assert of(Cluster([]).resolve_pod(pod(volumes=[], name="lonely"))).ref == "Pod ns/lonely"


def test_a_template_hash_that_is_not_a_string_is_named():
    facts = Cluster([]).resolve_pod(owned(pod(volumes=[]), "ReplicaSet", "web-5", {"pod-template-hash": 5}))
    with pytest.raises(InvalidManifest, match="^Pod ns/p: metadata.labels.pod-template-hash must be a string, got number$"):
        of(facts)


def test_owner_objects_in_the_dump_win_over_names():
    rs = {"kind": "ReplicaSet", "metadata": {"name": "odd-name", "namespace": "ns",
                                             "ownerReferences": [{"kind": "Deployment", "name": "api"}]}}
    job = {"kind": "Job", "metadata": {"name": "once", "namespace": "ns",
                                       "ownerReferences": [{"kind": "CronJob", "name": "nightly"}]}}
    cluster = Cluster([rs, job])
    facts = [cluster.resolve_pod(o) for o in (
        owned(pod(volumes=[]), "ReplicaSet", "odd-name"), owned(pod(volumes=[]), "Job", "once"),
        owned(pod(volumes=[]), "StatefulSet", "db"), owned(pod(volumes=[]), "DaemonSet", "agent"),
        owned(pod(volumes=[]), "Job", "plain-job"), pod(volumes=[]))]
    assert [of(f, cluster).ref for f in facts] == [
        "Deployment ns/api", "CronJob ns/nightly", "StatefulSet ns/db", "DaemonSet ns/agent", "Job ns/plain-job",
        "Pod ns/p"]


def test_the_controlling_owner_names_the_workload_not_the_first():
    obj = pod(volumes=[], name="db-0")
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "db-config"},  # an owner for garbage collection only
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "controller": True}]
    rs = {"kind": "ReplicaSet", "metadata": {"name": "api-5d", "namespace": "ns", "ownerReferences": [
        {"kind": "Deployment", "name": "old-api", "controller": False},
        {"kind": "Deployment", "name": "api", "controller": True}]}}
    cluster = Cluster([rs])
    facts = cluster.resolve_pod(obj)
    assert of(facts, cluster).ref == "StatefulSet ns/db"
    assert of(cluster.resolve_pod(owned(pod(volumes=[]), "ReplicaSet", "api-5d")), cluster).ref == \
        "Deployment ns/api"
    # Without any controller reference, the first one is taken, as before.
    obj["metadata"]["ownerReferences"][1]["controller"] = False
    assert of(cluster.resolve_pod(obj), cluster).ref == "ConfigMap ns/db-config"
