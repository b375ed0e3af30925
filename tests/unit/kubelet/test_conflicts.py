"""agent/kubelet/conflicts.py: the controller's comparison rule and event texts."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.k8s.facts import PodFacts
from agent.kubelet.conflicts import CHANGE_POLICY, LABEL, Conflict, controller_label, controller_labels_conflict
from agent.k8s.selinux_options import SELinuxOptions


# The newest upstream cache tests (PR #133425), reference §4.
@pytest.mark.parametrize("a, b, conflict", [
    ("system_u:system_r:label5", "::label5", False),
    ("system_u::label6", ":system_r:label6", False),
    ("::label6", "::label5", True),
    ("system_u:system_r:label7", "::label7:c0,c1", True),
    ("", "system_u:system_r:label8", False),
    ("", "system_u:system_r:label8:c0,c1", True),
    (":::s0:c1,c2", ":::s0:c1,c2", False),
    (":::s0:c1,c2", ":::s0:c2,c1", True),  # the level is compared as text
    ("staff_u:::s0", ":::s0", False),
    (":::s0", "", True),
])
def test_controller_comparison(a, b, conflict):
    assert controller_labels_conflict(a, b) is conflict
    assert controller_labels_conflict(b, a) is conflict


@pytest.mark.parametrize("options, label", [
    (None, ""),
    (SELinuxOptions(), ""),
    (SELinuxOptions(level="s0:c0,c1"), ":::s0:c0,c1"),
    (SELinuxOptions(user="u", role="r", type="t", level="s0"), "u:r:t:s0"),
    (SELinuxOptions(type="container_t"), "::container_t:"),
])
def test_controller_label_is_not_defaulted(options, label):
    assert controller_label(options) == label


def _pod(namespace, name):
    return PodFacts(namespace, name, "", "", "", None, "", ())


def test_event_message_same_namespace():
    conflict = Conflict("pv1", LABEL, _pod("ns", "a"), "system_u:system_r:container_t:s0:c0,c1", _pod("ns", "b"),
                        "system_u:system_r:container_t:s0:c98,c99")
    assert conflict.event_message() == (
        'SELinuxLabel "system_u:system_r:container_t:s0:c0,c1" conflicts with pod b that uses the same volume as '
        'this pod with SELinuxLabel "system_u:system_r:container_t:s0:c98,c99". If both pods land on the same '
        "node, only one of them may access the volume.")


def test_event_message_other_namespace_is_censored_with_upstream_spacing():
    conflict = Conflict("pv1", LABEL, _pod("ns1", "a"), ":::s0:c1", _pod("ns2", "b"), ":::s0:c2")
    message = conflict.event_message()
    assert message.startswith('SELinuxLabel":::s0:c1" conflicts with another pod that uses the same volume')
    assert "b" not in message.split("conflicts")[1].split("SELinuxLabel")[0]
    assert ":::s0:c2" not in message and "ns2" not in message
    assert conflict.to_json(censor=True)["pod2"] == {"namespace": "", "name": "", "value": ""}
    assert conflict.to_json()["pod2"]["name"] == "b"


# Point 5 of issue #19: a Recursive pod against a MountOption pod. selinux_warning_controller.go syncPod takes
# mountInfo.SELinuxMountLabel, which pkg/volume/util/selinux.go GetMountSELinuxLabel clears for Recursive
# (PR #130472, "selinux: Ignore pods with Recursive policy"); cache/volumecache.go AddVolume then compares the
# policies and, independently, ConflictsParsed(labels), where the level is strict since PR #133425. So 1.36 and
# 1.37 report a SELinuxLabel conflict ("" against the level) on top of the SELinuxChangePolicy one, and none
# when the MountOption pod has no level.
@pytest.mark.parametrize("recursive, mount_option, expected", [
    ("", ":::s0:c1,c2", {CHANGE_POLICY, LABEL}),  # volumecache_test: label "" vs a level
    ("", "system_u:system_r:label1", {CHANGE_POLICY}),  # volumecache_test "new conflicting policy"
    ("", "", set()),  # two Recursive uses: the policies are equal, the labels ""
])
def test_recursive_against_mount_option_as_the_newest_volume_cache(recursive, mount_option, expected):
    from agent.kubelet.conflicts import VolumeUse, controller_conflicts

    def use(name, label, policy):
        return VolumeUse("v", _pod("ns", name), label, policy, None, False, False, False)

    policy = "Recursive" if mount_option == "" else "MountOption"
    found = controller_conflicts([use("r", recursive, "Recursive"), use("m", mount_option, policy)])
    assert {c.property for c in found} == expected
    assert len(found) == 2 * len(expected)  # both directions
