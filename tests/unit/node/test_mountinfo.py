"""agent/node/mountinfo.py: the kernel's mountinfo lines and option lists."""

from hypothesis import given
from hypothesis import strategies as st

from agent.label import Label
from agent.node.mountinfo import (context_from_options, escape_path, find_mount, find_mount_in_text, parse_line,
                             parse_mountinfo, read_mount_at, read_mountinfo, split_options, unescape_path)

LINE = ('3121 29 7:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount rw,relatime shared:1492 - ext4 '
        '/dev/loop3 rw,context="system_u:object_r:container_file_t:s0:c1,c2"')


def test_parse_line_with_context():
    mount = parse_line(LINE)
    assert mount.mount_id == 3121 and mount.parent_id == 29 and mount.major_minor == "7:3"
    assert mount.fstype == "ext4" and mount.source == "/dev/loop3"
    assert mount.optional_fields == ("shared:1492",)
    assert mount.super_options == ("rw", 'context="system_u:object_r:container_file_t:s0:c1,c2"')
    assert mount.context == Label.parse("system_u:object_r:container_file_t:s0:c2,c1")
    assert not mount.seclabel and not mount.read_only


def test_seclabel_and_escapes():
    mount = parse_line(r"40 1 0:5 / /mnt/with\040space ro - tmpfs tmp\011fs rw,seclabel,size=10k")
    assert mount.mount_point == "/mnt/with space"
    assert mount.source == "tmp\tfs"
    assert mount.seclabel and mount.read_only and mount.context is None


def test_no_optional_fields():
    mount = parse_line("22 1 0:21 / /proc rw - proc proc rw")
    assert mount.optional_fields == () and mount.fstype == "proc"


def test_split_options_keeps_quoted_commas():
    assert split_options('a,context="u:r:t:s0:c1,c2",b') == ["a", 'context="u:r:t:s0:c1,c2"', "b"]
    assert split_options("") == []
    assert split_options("rw") == ["rw"]


def test_context_from_options():
    assert context_from_options(["noatime", 'context="u:r:t:s0:c1,c2"']) == Label.parse("u:r:t:s0:c1,c2")
    assert context_from_options("rw,fscontext=u:r:t:s0") is None


def test_find_mount_takes_the_top_one():
    mounts = parse_mountinfo("1 0 0:1 / /a rw - ext4 /dev/x rw\n2 1 0:2 / /a rw - tmpfs t rw\n")
    assert find_mount(mounts, "/a").mount_id == 2 and find_mount(mounts, "/b") is None


def test_read_mountinfo_of_this_process():
    mounts = read_mountinfo()
    assert any(m.mount_point == "/" for m in mounts)


def test_unescape_path():
    assert unescape_path(r"a\134b") == "a\\b"


TABLE = "\n".join([
    "1 0 0:1 / / rw - ext4 /dev/root rw",
    "2 1 0:2 /a /a rw - tmpfs t rw",  # "/a" as the root field and as the mount point
    "3 1 0:3 / /a\\040b rw - tmpfs t rw",  # "/a b"
    "4 1 0:4 /x /a/c rw - ext4 /dev/y rw",
    "5 2 0:5 / /a rw shared:7 - ext4 /dev/z rw,context=\"u:object_r:t:s0:c1,c2\"",  # stacked on 2
    "6 1 0:6 /a /b rw - tmpfs t rw",  # "/a" only as a root field
]) + "\n"


def test_find_mount_in_text_agrees_with_the_full_parse():
    everything = parse_mountinfo(TABLE)
    for path in ("/", "/a", "/a b", "/a/c", "/b", "/x", "/a\\040b", "/nowhere"):
        assert find_mount_in_text(TABLE, path) == find_mount(everything, path), path
    assert find_mount_in_text(TABLE, "/a").mount_id == 5
    assert find_mount_in_text(TABLE.rstrip("\n"), "/b").mount_id == 6  # last line without its newline


@given(st.text(alphabet=st.sampled_from(list("ab/ \t\\\n")), min_size=1, max_size=8))
def test_escape_path_round_trips(path):
    assert "\n" not in escape_path(path) and " " not in escape_path(path)
    assert unescape_path(escape_path(path)) == path


def test_read_mount_at_of_this_process():
    assert read_mount_at("/") == find_mount(read_mountinfo(), "/")