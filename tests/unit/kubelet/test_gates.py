"""agent/kubelet/gates.py: gate defaults per version and kubelet's refusals."""

import pytest

from agent.errors import InvalidFeatureGates
from agent.kubelet.gates import parse_overrides, parse_version, resolve


@pytest.mark.parametrize("version, rwop, change_policy, mount", [
    ("1.28", True, False, False),
    ("1.31", True, False, False),
    ("1.32", True, False, False),
    ("1.33", True, True, False),
    ("1.35", True, True, False),
    ("1.36", True, True, False),
    ("v1.36.3", True, True, False),
    ("1.37", True, True, True),
])
def test_defaults_per_version(version, rwop, change_policy, mount):
    gates = resolve(version)
    assert (gates.rwop, gates.change_policy, gates.mount) == (rwop, change_policy, mount)


def test_overrides_apply_where_the_gate_is_mutable():
    gates = resolve("1.33", {"SELinuxMount": True})
    assert gates.mount and gates.mount_effective
    assert not resolve("1.33", {"SELinuxChangePolicy": False}).change_policy
    assert resolve("1.32", {"SELinuxChangePolicy": True}).change_policy


def test_mount_without_rwop_acts_as_off():
    gates = resolve("1.33", {"SELinuxMountReadWriteOncePod": False, "SELinuxMount": True})
    assert gates.mount and not gates.mount_effective


@pytest.mark.parametrize("version, overrides, words", [
    ("1.36", {"SELinuxChangePolicy": False}, "locked to true"),
    ("1.36", {"SELinuxMountReadWriteOncePod": False}, "locked to true"),
    ("1.37", {"SELinuxMount": False}, "locked to true"),
    ("1.29", {"SELinuxMount": True}, "unrecognized feature gate: SELinuxMount"),
    ("1.31", {"SELinuxChangePolicy": True}, "unrecognized feature gate: SELinuxChangePolicy"),
])
def test_kubelet_refusals(version, overrides, words):
    with pytest.raises(InvalidFeatureGates) as info:
        resolve(version, overrides)
    assert words in str(info.value)


@pytest.mark.parametrize("version, name", [
    ("1.36", "NodeSwap"), ("1.33", "KubeletPSI"), ("1.37", "UserNamespacesSupport"), ("1.35", "ContextualLogging"),
    ("1.32", "SomethingElse"),  # no list of names for 1.32: only the SELinux gates are checked there
])
def test_gates_of_that_release_are_accepted_and_change_nothing(version, name):
    assert resolve(version, {name: True}) == resolve(version)


# Names from test/compatibility_lifecycle/reference/feature_list.md (agent/kubelet/gate_names.py); kubelet refuses a name
# it does not know (component-base featuregate Set: "unrecognized feature gate").
@pytest.mark.parametrize("version, name, message", [
    ("1.36", "SomethingElse", "unrecognized feature gate: SomethingElse (not a feature gate of Kubernetes 1.36)"),
    ("1.37", "NodeSwapp", "unrecognized feature gate: NodeSwapp (did you mean NodeSwap?)"),
    ("1.33", "UserNamespaceSupport", "unrecognized feature gate: UserNamespaceSupport (did you mean "
                                     "UserNamespacesSupport?)"),
    ("1.33", "EnvFiles", "unrecognized feature gate: EnvFiles (it does not exist in 1.33; it appears in 1.34)"),
])
def test_names_that_are_not_gates_of_that_release_are_refused(version, name, message):
    with pytest.raises(InvalidFeatureGates) as info:
        resolve(version, {name: True})
    assert str(info.value) == message


@pytest.mark.parametrize("text", ["1.27", "1.38", "2.0", "latest", "1.x"])
def test_versions_outside_the_model(text):
    with pytest.raises(InvalidFeatureGates):
        parse_version(text)


def test_parse_overrides():
    assert parse_overrides("SELinuxMount=true, SELinuxChangePolicy=False") == {
        "SELinuxMount": True, "SELinuxChangePolicy": False}
    assert parse_overrides("") == {}
    for bad in ("SELinuxMount", "SELinuxMount=yes"):
        with pytest.raises(InvalidFeatureGates):
            parse_overrides(bad)


@pytest.mark.parametrize("name, close", [
    ("SELinuxMounts", "SELinuxMount"),
    ("SeLinuxMount", "SELinuxMount"),
    ("SELinuxChangePolicies", "SELinuxChangePolicy"),
    ("SELinuxMountReadWriteOncePods", "SELinuxMountReadWriteOncePod"),
])
def test_a_misspelt_selinux_gate_is_refused_with_the_close_match(name, close):
    # kubelet refuses a gate it does not know (component-base featuregate Set: "unrecognized feature gate").
    with pytest.raises(InvalidFeatureGates) as info:
        resolve("1.36", {name: True})
    assert str(info.value) == f"unrecognized feature gate: {name} (did you mean {close}?)"
