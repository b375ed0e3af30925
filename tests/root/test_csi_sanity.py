"""csi-sanity (kubernetes-csi/csi-test, the CSI conformance suite) against the built-in driver.

The binary is looked up at $CSI_SANITY, then ../shared/tools/csi-sanity next to the repository; the test is
skipped with the reason when neither exists (a fresh machine has no such folder).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from csi_shim.server import build_server
from tests.root.csi_helpers import REPO, cleanup, loops_under, mounts_under, shim_config

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.slow]


def tool(variable: str, name: str) -> str | None:
    """$variable, else ../shared/tools/<name> next to the repository; None when neither is executable."""
    for candidate in (os.environ.get(variable), os.path.join(REPO, "..", "shared", "tools", name)):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    return None


def sanity_binary() -> str | None:
    return tool("CSI_SANITY", "csi-sanity")


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


def test_csi_sanity_passes_through_the_proxy(tmp_path):
    """The proxy in front of csi-driver-host-path (a plugin that mounts by itself): the path checks, locks and
    after-mount verification must let every spec of the conformance suite through."""
    binary, backend = sanity_binary(), tool("HOSTPATHPLUGIN", "hostpathplugin")
    if binary is None or backend is None:
        pytest.skip("csi-sanity or hostpathplugin not found: set CSI_SANITY and HOSTPATHPLUGIN or put them at "
                    "../shared/tools/")
    config = shim_config(tmp_path, backend_endpoint=f"unix://{tmp_path}/hp.sock")
    os.makedirs(f"{config.kubelet_root}/pods/sanity")
    os.makedirs(f"{config.kubelet_root}/plugins/sanity")
    plugin = subprocess.Popen([backend, f"--endpoint=unix://{tmp_path}/hp.sock", "--nodeid=node-1",
                               "--drivername=hostpath.csi.k8s.io", f"--statedir={tmp_path}/hp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        for _ in range(300):
            if os.path.exists(f"{tmp_path}/hp.sock") or plugin.poll() is not None:
                break
            time.sleep(0.05)
        server = build_server(config).start()
        result = subprocess.run(
            [binary, f"-csi.endpoint=unix://{config.socket}",
             f"-csi.mountdir={config.kubelet_root}/pods/sanity/mount",
             f"-csi.stagingdir={config.kubelet_root}/plugins/sanity/globalmount", "-ginkgo.no-color"],
            capture_output=True, text=True, timeout=540)
    finally:
        if server is not None:
            server.stop(0)
        plugin.terminate()
        plugin.wait(30)
        leftovers = mounts_under(str(tmp_path))
        cleanup(str(tmp_path))
    summary = re.findall(r"^.*\d+ Passed \| \d+ Failed.*$", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and summary and " 0 Failed" in summary[-1], result.stdout[-4000:]
    assert int(re.search(r"Ran (\d+) of", result.stdout)[1]) >= 60
    assert leftovers == [], leftovers
