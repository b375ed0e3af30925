"""The steps of a stage or publish that the built-in driver (csi_shim/node.py) and the proxy (csi_shim/proxy.py)
share: the label guard before the mount and the fallback after it.

The guard refuses a second label on a volume this node already holds with another (kubelet's conflict text,
csi_shim/plan.py). The fallback acts on what mountinfo showed: a context that took needs nothing, a dropped one
gets the relabel walker or FAILED_PRECONDITION (--on-context-dropped), and fsGroup ownership is applied where
the walker does not visit. The decisions themselves are pure and live in csi_shim/plan.py; this module holds the
steps that carry them out, so neither mode borrows from the other.
"""

from __future__ import annotations

import logging
import os
import time

from agent.errors import ContextNotApplied
from agent.label import Label
from csi_shim import mounter as host_mounter
from csi_shim.config import ShimConfig
from csi_shim.mounter import APPLIED, DROPPED, MISMATCH, Verification
from csi_shim.plan import FAIL, FS_GROUP, RELABEL, MountPlan, after_mount, dropped_hint, label_conflict
from csi_shim.records import DONE
from csi_shim.journal import State

log = logging.getLogger(__name__)


# ---- before the mount: one label per volume on this node -----------------------------------------------------

def _label(text: str | None) -> Label | None:
    return Label.parse(text) if text else None


def holders(state: State, volume_id: str) -> list[tuple[str, str]]:
    """(namespace, name) of the pods a volume is published for, as far as volume_context told us."""
    return [tuple(rec["pod"]) for _, rec in state.publishers(volume_id) if rec.get("pod")]


def check_stage_label(state: State, volume_id: str, label: Label | None) -> None:
    """A volume staged with one label cannot be staged or published with another (KEP-1710: a superblock has
    one context; kubelet unstages before it mounts with a new label)."""
    record = state.staged.get(volume_id)
    if record is None or record.get("status") != DONE:
        return
    held = _label(record.get("label"))
    if held != label:
        raise label_conflict(volume_id, held, label, holders(state, volume_id))


def check_publish_label(state: State, volume_id: str, label: Label | None, requester) -> None:
    record = state.staged.get(volume_id)
    if record is not None and record.get("status") == DONE:
        held = _label(record.get("label"))
        if held != label:
            raise label_conflict(volume_id, held, label, holders(state, volume_id),
                                 requester[0] if requester else None)


# ---- after the mount: relabel walker or fsGroup ------------------------------------------------------------

def walker(name: str, what: str):
    """`agent.relabel.volume.<name>`, imported when first needed: a checkout whose C walker is not built still
    serves every volume that needs no walk."""
    try:
        from agent.relabel import volume as relabel
    except ImportError as err:
        raise ContextNotApplied(f"the {what} (agent.relabel.volume) is not available: {err}") from None
    return getattr(relabel, name)


def apply_fs_group(path, gid: int, read_only: bool):
    """kubelet's fsGroup ownership (pkg/volume/volume_linux.go) for a volume the relabel walker does not visit:
    a context mount needs no relabel, and one without a label has none to apply. The walker's ownership-only
    pass (`agent.relabel.volume.apply_fs_group`): dirfd-relative, never following a symlink the pod swaps in, never
    entering a mount, one filesystem only. `path` is a path or an open directory fd. Entries that failed are
    logged, as kubelet logs them; the volume is still published."""
    stats = walker("apply_fs_group", "fsGroup walker")(path, gid, read_only=read_only, policy="Always")
    if stats.errors:
        log.warning("fsGroup %d on %s: %d entries failed (%s); first: %s", gid, stats.path.decode(errors="replace"),
                    stats.errors, ", ".join(f"{k} {v}" for k, v in stats.errors_by_errno.items()),
                    "; ".join(f"{s.op} {s.path.decode(errors='replace')}: {os.strerror(s.errno)}"
                              for s in stats.error_samples[:3]))
    return stats


def finish_publish(path: str | int, verification: Verification, plan: MountPlan, config: ShimConfig,
                   volume_id: str, metrics=None, mounter=host_mounter) -> str:
    """Act on the verifier's result for a published path; returns what was done (for state and logs). `path`
    is the path or, better, an open descriptor of the mount's root (the walkers then never walk names);
    `mounter` is what tells whether that mount takes writes (csi_shim.mounter, or a stand-in in tests).

    Runs before the publish is made read-only, so a `readonly` publish of a writable volume still gets its
    relabel and its ownership (with kubelet's read-only mask). A filesystem that is itself mounted read-only
    (reader-only access modes) takes no writes: a dropped context then fails, fsGroup is skipped."""
    writable = True
    if verification.status == DROPPED or plan.mount_group is not None:
        writable = mounter.writable(path)
    action = after_mount(verification.status, config.on_context_dropped, plan.context, plan.mount_group, writable)
    if metrics is not None:
        metrics.verified(verification.status)
        if action != FAIL:
            # What labelled this volume: its context mount, our relabel fallback, or nothing asked for one.
            metrics.decided("mount" if verification.status == APPLIED else
                            "recursive" if action == RELABEL else "skip")
    if action == FAIL:
        hint = ("" if verification.status == MISMATCH else
                dropped_hint(config.on_context_dropped, writable))
        raise ContextNotApplied(f"volume {volume_id}: {verification.describe()}{hint}")
    if action == RELABEL:
        relabel = walker("relabel", "recursive relabel walker")
        started = time.monotonic()
        stats = relabel(path, plan.context, threads=config.relabel_threads, one_file_system=True,
                        dry_run=False, fs_group=plan.mount_group, fs_group_policy="Always",
                        read_only=plan.readonly)
        if metrics is not None:
            metrics.relabelled(stats, time.monotonic() - started, plan.mount_group is not None)
        log.warning("volume %s: %s; relabelled %s recursively instead (%s)", volume_id, verification.describe(),
                    verification.path, getattr(stats, "changed", stats))
    elif action == FS_GROUP:
        apply_fs_group(path, plan.mount_group, plan.readonly)
        if metrics is not None:
            metrics.fs_group_pass()
    elif plan.mount_group is not None and not writable:
        log.info("volume %s: %s is mounted read-only; fsGroup %d not applied (kubelet skips it for read-only "
                 "volumes)", volume_id, verification.path, plan.mount_group)
    return action
