"""csi-sanity (kubernetes-csi/csi-test, the CSI conformance suite) against the built-in driver.

The binary is looked up at $CSI_SANITY, then ../shared/tools/csi-sanity next to the repository; the test is
skipped with the reason when neither exists (a fresh machine has no such folder).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from csi_shim.server import build_server
from tests.root.csi_helpers import REPO, cleanup, loops_under, mounts_under, shim_config

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.slow]


def sanity_binary() -> str | None:
    for candidate in (os.environ.get("CSI_SANITY"), os.path.join(REPO, "..", "shared", "tools", "csi-sanity")):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return None


def test_csi_sanity_passes(tmp_path):
    binary = sanity_binary()
    if binary is None:
        pytest.skip("csi-sanity not found: set CSI_SANITY or put it at ../shared/tools/csi-sanity")
    config = shim_config(tmp_path)
    # csi-sanity creates the two directories with mkdir (not mkdir -p), as kubelet creates its parents.
    os.makedirs(f"{config.kubelet_root}/pods/sanity")
    os.makedirs(f"{config.kubelet_root}/plugins/sanity")
    server = build_server(config).start()
    try:
        result = subprocess.run(
            [binary, f"-csi.endpoint=unix://{config.socket}",
             f"-csi.mountdir={config.kubelet_root}/pods/sanity/mount",
             f"-csi.stagingdir={config.kubelet_root}/plugins/sanity/globalmount",
             f"-csi.testvolumesize={32 << 20}", "-ginkgo.no-color"],
            capture_output=True, text=True, timeout=540)
    finally:
        server.stop(0)
        leftovers = mounts_under(str(tmp_path)), loops_under(str(tmp_path))
        cleanup(str(tmp_path))
    summary = re.findall(r"^.*\d+ Passed \| \d+ Failed.*$", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and summary and " 0 Failed" in summary[-1], result.stdout[-4000:]
    assert re.search(r"Ran (\d+) of", result.stdout) and int(re.search(r"Ran (\d+) of", result.stdout)[1]) >= 30
    assert leftovers == ([], []), leftovers  # the suite's volumes left no mount or loop device behind
