"""`selinux-mount-agent relabel`: label a volume recursively, the fallback when `-o context=` is not possible.

Contract:
  relabel PATH --label LABEL [--threads N] [--dry-run] [--one-file-system|--cross-mounts]
          [--fs-group GID] [--fs-group-policy Always|OnRootMismatch] [--read-only] [--no-compare] [-o table|json]
Exit codes: 0 done without errors; 1 walk finished but some entries failed (see the error samples);
2 bad input or a walk that cannot run (read-only or label-less filesystem, refused system path, also one reached
by another name such as a bind mount of /etc or /proc/1/root/etc).
"""

from __future__ import annotations

import json
import sys

from agent.cli.examples import examples
from agent.cli.printable import printable
from agent.parsing.numbers import ascii_decimal
from agent.relabel.volume import FS_GROUP_POLICIES, RelabelProgress, RelabelStats, relabel


def _positive_int(text: str) -> int:
    import argparse

    value = ascii_decimal(text, 2**31 - 1)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (ASCII digits)")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _gid(text: str) -> int:
    import argparse

    if ascii_decimal(text, 2**64) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a numeric group id (ASCII digits)")
    value = ascii_decimal(text, 2**32 - 2)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range for a group id")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "relabel", help="set an SELinux label on a volume and everything in it (parallel, never follows symlinks)",
        description="Label PATH and every entry below it with LABEL, the way a container runtime relabels a "
                    "volume for a pod (`:Z`), but in parallel, without following symlinks, without rewriting "
                    "entries that are already right, and never entering a mount point below PATH. System "
                    "directories are refused, also by another name (a bind mount, /proc/PID/root). The root is "
                    "labelled last. With --fs-group, kubelet's fsGroup ownership is applied in the same pass.",
        **examples(("label a volume for a pod with categories c1,c2",
                    "relabel /srv/volumes/data --label system_u:object_r:container_file_t:s0:c1,c2"),
                   ("count what would change, as JSON", "relabel /srv/volumes/data -l LABEL --dry-run -o json"),
                   ("label and apply fsGroup 2000 unless the root already has both",
                    "relabel /srv/volumes/data -l LABEL --fs-group 2000 --fs-group-policy OnRootMismatch")))
    parser.add_argument("path", metavar="PATH",
                        help="the volume's root directory; system directories are refused, also by another name")
    parser.add_argument("--label", "-l", required=True, help="full context, e.g. system_u:object_r:container_file_t:s0:c1,c2")
    parser.add_argument("--threads", "-j", type=_positive_int, default=None, help="worker threads (default: CPUs)")
    parser.add_argument("--dry-run", "-n", action="store_true", help="count what would change, change nothing")
    mounts = parser.add_mutually_exclusive_group()
    mounts.add_argument("--one-file-system", dest="one_file_system", action="store_true", default=True,
                        help="skip mount points below PATH: other filesystems and bind mounts (the default)")
    mounts.add_argument("--cross-mounts", dest="one_file_system", action="store_false",
                        help="also label filesystems mounted below PATH")
    parser.add_argument("--fs-group", type=_gid, default=None, metavar="GID",
                        help="apply kubelet's fsGroup ownership: group GID, group rw, dirs setgid")
    parser.add_argument("--fs-group-policy", choices=FS_GROUP_POLICIES, default="Always",
                        help="kubelet fsGroupChangePolicy: OnRootMismatch skips ownership changes when the root "
                             "already has them, and the whole walk when the root also has the label (a "
                             "finished earlier walk)")
    parser.add_argument("--read-only", action="store_true", help="fsGroup on a read-only volume: group r, not rw")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="write every label without reading it first (like chcon -R; changes ctimes)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="a summary table with error samples (default), or JSON")
    parser.set_defaults(func=run)


class _ProgressLine:
    """A one-line progress display on a terminal's stderr, shown only once a walk takes a while."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = False

    def __call__(self, p: RelabelProgress) -> None:
        if p.elapsed < 1.0:
            return
        rate = p.seen / p.elapsed if p.elapsed else 0
        self.stream.write(f"\rrelabel: {p.seen:,} entries, {p.changed:,} changed, {rate:,.0f}/s, "
                          f"{p.elapsed:.0f}s\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run(args) -> int:
    line = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        stats = relabel(args.path, args.label, threads=args.threads, one_file_system=args.one_file_system,
                        dry_run=args.dry_run, fs_group=args.fs_group, fs_group_policy=args.fs_group_policy,
                        read_only=args.read_only, compare=args.compare, progress=line)
    finally:
        if line:
            line.close()
    if args.output == "json":
        json.dump(stats.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(stats)
    return 0 if stats.ok else 1


def print_table(stats: RelabelStats) -> None:
    doc = stats.to_json()
    rows = [
        ("path", printable(doc["path"])),
        ("label", doc["label"]),
        ("mode", "dry run (nothing written)" if stats.dry_run else "relabel"),
        ("entries seen", f"{stats.seen:,}"),
        ("would change" if stats.dry_run else "changed", f"{stats.changed:,}"),
        ("already correct", f"{stats.already_correct:,}"),
        ("other filesystem (skipped)", f"{stats.other_filesystem:,}"),
        ("vanished during walk", f"{stats.vanished:,}"),
    ]
    if stats.fs_group is not None:
        rows.append(("fsGroup", f"{stats.fs_group}" + (
            " (root's ownership and label already right: walk skipped)" if stats.walk_skipped else
            " (root already right: ownership skipped)" if stats.ownership_skipped else "")))
        rows.append(("group changed", f"{stats.owner_changed:,}"))
        rows.append(("mode changed", f"{stats.mode_changed:,}"))
    rows.append(("errors", f"{stats.errors:,}" + (
        "  (" + ", ".join(f"{name} {count:,}" for name, count in stats.errors_by_errno.items()) + ")"
        if stats.errors else "")))
    if stats.root_deferred and stats.errors:
        rows.append(("root", "left as it was, because entries below it failed: a rerun walks again"))
    rows.append(("time", f"{stats.elapsed:.3f}s, {stats.rate:,.0f} entries/s, {stats.threads} threads"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for sample in doc["errorSamples"]:
        # Names below the root are a pod's own bytes: escaped, as avc text output escapes a record's fields.
        print(f"  {sample['op']}: {printable(sample['path'])}: {sample['message']}")
