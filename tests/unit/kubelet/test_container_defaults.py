"""agent/kubelet/container_defaults.py and agent/node/contexts.py: contexts files and kubelet's file-label construction."""

import pytest

from agent.k8s.selinux_options import SELinuxOptions
from agent.k8s.facts import ContainerUse
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS, file_label, file_labels, parse_contexts
from agent.node.contexts import load_node_defaults
from agent.errors import InvalidInput, InvalidLabel

DEBIAN_LXC = """\
process = "system_u:system_r:container_t:s0"
content = "system_u:object_r:virt_var_lib_t:s0"
file = "system_u:object_r:svirt_lxc_file_t:s0"
ro_file = "system_u:object_r:container_ro_file_t:s0"
sandbox_kvm_process = "system_u:system_r:svirt_qemu_net_t:s0"
"""


def test_parse_contexts_file():
    defaults = parse_contexts(DEBIAN_LXC, "lxc_contexts")
    assert defaults.process.text == "system_u:system_r:container_t:s0"
    assert defaults.file.type == "svirt_lxc_file_t"
    assert defaults.source == "lxc_contexts"


def test_parse_contexts_accepts_comments_and_bare_values():
    defaults = parse_contexts("# c\n\nprocess=u:r:p_t:s0\nfile = 'u:object_r:f_t:s0'\n", "x")
    assert defaults.file.text == "u:object_r:f_t:s0"


@pytest.mark.parametrize("text, words", [
    ('process = "u:r:t:s0"\n', "no 'file' entry"),
    ('process = "u:r:t:s0"\nfile = "bad label"\n', "file entry of x"),
    ("garbage line\n", "expected 'key"),
])
def test_bad_contexts_files(text, words):
    with pytest.raises(InvalidInput) as info:
        parse_contexts(text, "x")
    assert words in str(info.value)


@pytest.mark.parametrize("options, expected", [
    # user and level from the pod, role and type from the file entry (go-selinux InitLabels)
    (SELinuxOptions(level="s0:c1,c2"), "system_u:object_r:container_file_t:s0:c1,c2"),
    (SELinuxOptions(user="system_u", role="system_r", type="container_t", level="s0:c0,c1"),
     "system_u:object_r:container_file_t:s0:c0,c1"),
    (SELinuxOptions(type="spc_t", level="s0"), "system_u:object_r:container_file_t:s0"),
    (SELinuxOptions(user="staff_u", level="s0:c5"), "staff_u:object_r:container_file_t:s0:c5"),
    (SELinuxOptions(type="container_t"), "system_u:object_r:container_file_t"),
    (SELinuxOptions(), None),
    (None, None),
])
def test_file_label_like_kubelet(options, expected):
    label = file_label(options, BUILTIN_DEFAULTS)
    assert (label.text if label else None) == expected


def test_file_label_uses_the_node_file_type():
    defaults = parse_contexts(DEBIAN_LXC, "lxc_contexts")
    assert file_label(SELinuxOptions(level="s0:c1"), defaults).text == "system_u:object_r:svirt_lxc_file_t:s0:c1"


def test_options_are_validated_with_the_field_named():
    with pytest.raises(InvalidLabel) as info:
        SELinuxOptions(level='s0:c1",ro').validate("Pod a/b spec.securityContext")
    assert "level in Pod a/b spec.securityContext seLinuxOptions" in str(info.value)


def test_load_node_defaults_explicit_file(tmp_path):
    path = tmp_path / "contexts"
    path.write_text(DEBIAN_LXC)
    assert load_node_defaults(str(path)).source == str(path)
    with pytest.raises(InvalidInput) as info:
        load_node_defaults(str(tmp_path / "missing"))
    assert "cannot read defaults file" in str(info.value)


def test_load_node_defaults_falls_back_to_built_in(monkeypatch):
    import agent.node.contexts as defaults_mod

    monkeypatch.setattr(defaults_mod, "candidate_files", lambda: ["/nonexistent/contexts"])
    assert load_node_defaults() is BUILTIN_DEFAULTS


def test_defaults_are_values():
    # Two readings of one contexts file are one set of defaults, for label building and its memo alike.
    first, second = parse_contexts(DEBIAN_LXC, "lxc_contexts"), parse_contexts(DEBIAN_LXC, "lxc_contexts")
    assert first == second and hash(first) == hash(second) and first != BUILTIN_DEFAULTS
    assert file_label(SELinuxOptions(level="s0:c1"), first) == file_label(SELinuxOptions(level="s0:c1"), second)


def test_the_label_set_of_a_volume_like_kubelet():
    def use(options):
        return ContainerUse("c", "container", options)

    labels = file_labels([use(None), use(SELinuxOptions(level="s0:c1")), use(SELinuxOptions(level="s0:c1")),
                          use(SELinuxOptions()), use(SELinuxOptions(user="staff_u", level="s0:c1"))],
                         BUILTIN_DEFAULTS)
    # No options add nothing, empty options add "", equal labels are one.
    assert list(labels) == ["system_u:object_r:container_file_t:s0:c1", "",
                            "staff_u:object_r:container_file_t:s0:c1"]
    assert labels[""] is None and labels["system_u:object_r:container_file_t:s0:c1"].text.endswith(":s0:c1")
    assert file_labels([use(None)], BUILTIN_DEFAULTS) == {}

