"""`bench/relabel.py --vm` (`make vm-bench`): the relabel benchmark in the enforcing guest, then on the host.

The guest is the one `make vm-test` boots (vm/run-enforcing-tests, docs/enforcing-vm.md) with another guest
step: `--step relabel-bench` runs `bench/relabel.py --guest-run` (bench/relabel_guest.py) on the volume images
instead of pytest and brings back relabel-bench.json through the results disk. go-selinux's Chcon travels as a
static binary built here (CGO_ENABLED=0; the guest has no Go). The host then runs the same runners on the
same images (made by the same generator), so the two tables differ only in the kernel: SELinux enforcing or not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import relabel as host_bench
import relabel_floor
import relabel_guest

GUEST_MEMORY_LARGE_MB = 6144
RUNNER = os.path.join(host_bench.REPO, "vm", "run-enforcing-tests")
DOC = os.path.join(host_bench.REPO, "docs", "relabel-benchmark.md")


def guest_command(args, keep: str, go_binary: str | None, go_note: str, floor_module: str | None = None) -> list[str]:
    """vm/run-enforcing-tests' argv for the benchmark step; what follows `--` is the guest's bench arguments."""
    count = args.size_list[0]
    argv = [RUNNER, "--policy", args.policy, "--step", "relabel-bench", "--keep", keep]
    if go_binary:
        argv += ["--guest-file", f"relabel-go={go_binary}"]
    if floor_module:
        argv += ["--guest-file", f"_floor.so={floor_module}"]  # vm/guest/run-tests passes --floor-dir
    if count != 100_000:
        argv += ["--large-files", str(count)]  # the volumes disk then holds images of that size
    if count > 100_000:
        # The guest's 2 GiB would not keep a million inodes and dentries cached through a pass: evictions and
        # re-reads would be measured instead of labelling.
        argv += ["--memory", str(GUEST_MEMORY_LARGE_MB)]
    return argv + ["--", "--fs", ",".join(args.fs_list), "--sizes", str(count), "--repeat", str(args.repeat),
                   "--go-note", go_note]


def host_images(workdir: str, fstypes, count: int) -> str:
    """The guest's volume images, made again here by the same generator (tests/enforcing/volume_images.py)."""
    sys.path.insert(0, host_bench.REPO)
    from pathlib import Path

    from tests.enforcing.volume_images import build_image, image_name

    images = os.path.join(workdir, "images")
    for fstype in fstypes:
        print(f"== host: building {image_name(fstype, count)}", flush=True)
        build_image(Path(images) / image_name(fstype, count), fstype, count, Path(workdir) / f"tree-{fstype}")
        shutil.rmtree(Path(workdir) / f"tree-{fstype}", ignore_errors=True)
    return images


def command_line(args) -> str:
    words = ["python bench/relabel.py --vm", f"--policy {args.policy}", f"--fs {','.join(args.fs_list)}",
             f"--sizes {args.size_list[0]}"]
    if args.repeat != 1:
        words.append(f"--repeat {args.repeat}")
    return " ".join(words)


def floor_module() -> tuple[str | None, str | None]:
    """The floor extension built here ((its directory, its .so), or Nones): the guest has no compiler, and its
    python3 is the venv's Debian 3.11, so the module built here imports there."""
    try:
        directory = relabel_floor.build()
    except relabel_floor.FloorUnavailable as err:
        print(f"floor runners skipped: {err}", flush=True)
        return None, None
    return directory, relabel_floor.built_module(directory)  # build() made sure there is one


def main(args) -> int:
    go_binary, go_note = host_bench.build_go(static=True)
    print(f"go-selinux baseline: {go_note if go_binary else 'skipped: ' + go_note}", flush=True)
    floor_dir, floor_so = floor_module()
    keep = args.vm_keep or tempfile.mkdtemp(prefix="relabel-vm-")
    status = subprocess.run(guest_command(args, keep, go_binary, go_note, floor_so)).returncode
    result = os.path.join(keep, "results", relabel_guest.JSON_NAME)
    if not os.path.exists(result):
        print(f"bench/relabel.py --vm: the guest brought back no {relabel_guest.JSON_NAME} (exit status {status}; "
              f"console log in {keep})", file=sys.stderr)
        return 1
    with open(result) as handle:
        guest = json.load(handle)
    command = command_line(args)
    sections = [relabel_guest.render(guest, command)]
    if not args.no_host:
        workdir = tempfile.mkdtemp(prefix="relabel-host-", dir=args.workdir)
        try:
            images = host_images(workdir, args.fs_list, args.size_list[0])
            host = relabel_guest.run(images, os.path.join(workdir, "out"), args.fs_list, args.size_list[0],
                                     args.repeat, go_binary, go_note, where="host", floor_dir=floor_dir)
            with open(os.path.join(keep, "host-" + relabel_guest.JSON_NAME), "w") as handle:
                json.dump(host, handle, indent=1)
            sections.append(relabel_guest.render(host, command))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(sections)
    print("\n" + text)
    if not args.no_docs:
        with open(DOC) as handle:
            document = handle.read()
        with open(DOC + ".tmp", "w") as handle:
            handle.write(relabel_guest.replace_section(document, text))
        os.replace(DOC + ".tmp", DOC)
    print(f"guest results kept in {keep}")
    return 0 if status == 0 and guest["rows"] else 1
