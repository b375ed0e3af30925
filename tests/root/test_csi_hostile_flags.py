"""Hostile mount flags and mount groups through the real shim over gRPC: each is refused with INVALID_ARGUMENT
before anything is mounted, or (the one unambiguous other spelling of context=) mounted correctly; never an
INTERNAL error, and never a label that was not checked in a mount option string."""

from __future__ import annotations

import os

import grpc
import pytest

from tests.root.csi_helpers import LABEL_A, context_flag, mounts_under, running_shim, status_of

pytestmark = [pytest.mark.root, pytest.mark.loop]
C = grpc.StatusCode
PLAIN_LABEL = "system_u:object_r:container_file_t:s0"  # no categories, so no comma


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    with running_shim(tmp_path_factory.mktemp("hostile")) as (server, client):
        volume = client.create("pvc-hostile")
        yield client, volume.volume_id
        client.delete(volume.volume_id)


def refused(client, volume_id, flags=(), group="") -> str:
    staging = client.staging_path(volume_id)
    try:
        code, message = status_of(client.stage, volume_id, staging, flags, group=group)
    except AssertionError:
        client.unstage(volume_id, staging)  # accepted: undone, so the next case starts from nothing
        raise
    assert code == C.INVALID_ARGUMENT, (flags, group, code, message)
    assert not mounts_under(client.root), (flags, group)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("flag", [
    f'noatime,{context_flag(LABEL_A)}',                      # a well-formed label riding behind another option
    'noatime,context="system_u:object_r:x:s0:c1,c2"x',       # a malformed one
    'noatime,context="a b:c"',
    f'{context_flag(LABEL_A)},rw',
    'rw,noatime',
])
def test_a_comma_in_one_mount_flag_is_refused(shim, flag):
    client, volume_id = shim
    message = refused(client, volume_id, [flag])
    assert repr(flag) in message or "',' " in message, message


@pytest.mark.parametrize("flag", [
    f"context='{LABEL_A}'",
    f"context='{PLAIN_LABEL}'",
    f"context={LABEL_A}",          # unquoted: the comma would split the label for the kernel
    f'context="{PLAIN_LABEL}',     # an open quote
    'dirsync"',                     # a quote elsewhere changes where the kernel splits the option string
])
def test_context_forms_kubelet_does_not_write_are_refused_naming_its_form(shim, flag):
    client, volume_id = shim
    message = refused(client, volume_id, [flag])
    if flag.startswith("context="):
        assert 'context="<label>"' in message, message


def test_an_unquoted_label_without_comma_is_mounted_like_kubelets_form(shim):
    """The kernel reads `context=<label>` and `context="<label>"` alike when the label has no comma."""
    client, volume_id = shim
    staging = client.staging_path(volume_id)
    target = client.target_path("pod-bare-context")
    flags = [f"context={PLAIN_LABEL}"]
    client.stage(volume_id, staging, flags)
    try:
        client.publish(volume_id, staging, target, flags)
        try:
            # No SELinux here: the context is dropped and the walker labels the files instead.
            assert os.getxattr(target, "security.selinux").rstrip(b"\0").decode() == PLAIN_LABEL
        finally:
            client.unpublish(volume_id, target)
    finally:
        client.unstage(volume_id, staging)
    assert not mounts_under(client.root)


@pytest.mark.parametrize("group", ["\u00b2", "\u0663", "\uff11", "1\n", " 1", "+1", "4294967295", "9" * 5000])
def test_a_mount_group_that_is_not_ascii_digits_in_range_is_refused(shim, group):
    client, volume_id = shim
    message = refused(client, volume_id, group=group)
    assert "volume_mount_group" in message
