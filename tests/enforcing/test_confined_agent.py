"""The agent confined by its own module (deploy/selinux): installed into the guest's store, the CSI shim started
as selinux_mount_agent_t in proxy mode, kubelet's whole lifecycle over its socket, and not one AVC denial of
the agent's domain in the kernel log. When a rule is missing, the failure lists the denials: they name it.

The guest's store has dontaudit rules off (`semodule -DB` when the image is built; installing a module keeps
that), so a denial the policy would otherwise hide counts too. The directories carry the labels a node gives
them: kubelet's root container_var_lib_t (container-selinux's file context for /var/lib/kubelet), the socket
directory container_file_t (the pod's emptyDir), the state directory the module's own type (its .fc). The
harness's own needs (the guest's python3 and libraries instead of a container image, the test process as the
backend plugin) are vm/policy/smatest.te's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from agent.avc.assembler import parse_lines
from csi_shim.mounter import mounted_at
from tests.enforcing.conftest import KernelLog
from tests.polling import terminate, wait_for

grpc = pytest.importorskip("grpc", reason="grpcio is not importable here (the CI guest gets the host's copy)")
try:
    from tests.enforcing.test_csi_shim_enforcing import stage_seed_publish, volume_is_the_pods_own
    from tests.root.csi_backend import BackendNode, serve_backend
    from tests.root.csi_helpers import Client, cleanup, loops_under, mounts_under
except ImportError as err:  # protobuf older than the checked-in stubs need
    pytest.skip(f"the CSI stubs do not import here: {err}", allow_module_level=True)

pytestmark = pytest.mark.enforcing

REPO = Path(__file__).resolve().parents[2]
MODULE = "selinux_mount_agent"
DOMAIN = "selinux_mount_agent_t"
# The level deploy/proxy-sidecar sets (seLinuxOptions level s0).
AGENT_CONTEXT = f"system_u:system_r:{DOMAIN}:s0"
KUBELET_DIR = "system_u:object_r:container_var_lib_t:s0"
# An image's files and a pod's emptyDir (here: the socket directory) at the pod's level.
CONTAINER_FILE = "system_u:object_r:container_file_t:s0"
STATE_DIR = f"system_u:object_r:{MODULE}_var_lib_t:s0"
DEVEL_MAKEFILE = "/usr/share/selinux/devel/Makefile"


def module_package(tmp: Path) -> Path:
    """The package the host built with this guest policy's headers (vm-test), else one built here with the
    machine's own devel Makefile (a Vagrant machine with selinux-policy-devel)."""
    given = os.environ.get("SMA_AGENT_MODULE")
    if given:
        path = REPO / given
        assert path.is_file(), f"SMA_AGENT_MODULE names {path}, which is absent"
        return path
    if not (os.path.isfile(DEVEL_MAKEFILE) and shutil.which("make")):
        pytest.skip(f"no prebuilt {MODULE}.pp ($SMA_AGENT_MODULE) and no {DEVEL_MAKEFILE} to build one")
    for ext in ("te", "if", "fc"):
        shutil.copy(REPO / "deploy/selinux" / f"{MODULE}.{ext}", tmp / f"{MODULE}.{ext}")
    subprocess.run(["make", "-s", "-f", DEVEL_MAKEFILE, f"{MODULE}.pp"], cwd=tmp, check=True)
    return tmp / f"{MODULE}.pp"


def installed_modules() -> set[str]:
    listed = subprocess.run(["semodule", "-l"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def agent_module(tmp_path_factory):
    """The agent's module in the store for this module's tests, removed again at the end."""
    package = module_package(tmp_path_factory.mktemp("agent-module"))
    subprocess.run(["semodule", "-i", str(package)], check=True, capture_output=True, text=True)
    yield package
    subprocess.run(["semodule", "-r", MODULE], check=False, capture_output=True)


@pytest.fixture(scope="module")
def agent_python(agent_module, tmp_path_factory):
    """The interpreter as the agent's entrypoint: a copy labelled container_file_t:s0, as an image's files are."""
    copy = tmp_path_factory.mktemp("agent-image") / "python3"
    shutil.copy(os.path.realpath(sys.executable), copy)
    subprocess.run(["chcon", CONTAINER_FILE, str(copy)], check=True)
    return copy


class ConfinedShim:
    """`selinux-mount-agent csi` in proxy mode, started by runcon as the agent's domain from kernel_t."""

    def __init__(self, python: Path, work: Path):
        self.sockets, self.state, self.kubelet = work / "csi", work / "state", work / "kubelet"
        for directory, label in ((self.sockets, CONTAINER_FILE), (self.state, STATE_DIR), (self.kubelet, KUBELET_DIR)):
            directory.mkdir()
            subprocess.run(["chcon", label, str(directory)], check=True)
        self.socket, self.backend_socket = self.sockets / "csi.sock", self.sockets / "backend.sock"
        self.argv = ["runcon", AGENT_CONTEXT, str(python), "-m", "agent.cli.main", "csi",
                     f"--csi-endpoint=unix://{self.socket}", f"--backend-endpoint=unix://{self.backend_socket}",
                     f"--state-dir={self.state}", f"--kubelet-root={self.kubelet}", "--node-id=node-1"]
        self.proc = None

    def start(self) -> "ConfinedShim":
        env = dict(os.environ, PYTHONHOME=sys.base_prefix)  # the copy finds the guest's standard library
        # Pipes, not files: the console and the test's tmp_t files are not the agent's to write.
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started = wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, timeout=120)
        assert started and self.proc.poll() is None, f"the confined shim did not start: {self.stop()}"
        return self

    def context(self) -> str:
        with open(f"/proc/{self.proc.pid}/attr/current", encoding="ascii") as handle:
            return handle.read().rstrip("\0\n")

    def stop(self) -> str:
        """Stops the shim (SIGTERM, as kubelet would) and returns what it logged."""
        terminate(self.proc, grace=30)
        return self.proc.stdout.read().decode("utf-8", "replace")


def agent_denials(lines: list[str]) -> list[str]:
    """The AVC denials whose source is the agent's domain, one line each: what was denied on what."""
    denials, _ = parse_lines(lines)
    return [f"{{ {' '.join(d.permissions)} }} {d.tclass} tcontext={d.tcontext} comm={d.comm} name={d.name} "
            f"permissive={int(bool(d.permissive))}" for d in denials if d.denied and d.source_type == DOMAIN]


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(str(tmp_path))
    assert not mounts_under(str(tmp_path)) and not loops_under(str(tmp_path))


def test_module_installs_and_declares_the_agent_domain(agent_module):
    import selinux

    assert MODULE in installed_modules()
    for context in (AGENT_CONTEXT, STATE_DIR):
        assert selinux.security_check_context(context) == 0, f"{context} is not valid in the loaded policy"


@pytest.mark.parametrize("mode, context_applied", [
    ("keep", True),    # the plugin passes context= to mount(2): the shim verifies it from mountinfo
    ("drop", False),   # the plugin loses it: the shim sees that and relabels the volume's files
])
def test_confined_agent_serves_the_whole_lifecycle_without_a_denial(agent_python, workdir, confined, mode,
                                                                     context_applied):
    log = KernelLog()
    shim = ConfinedShim(agent_python, workdir)
    backend = serve_backend(str(shim.backend_socket), BackendNode(mode=mode))
    client = None
    failure, output = None, ""
    try:
        shim.start()
        assert shim.context() == AGENT_CONTEXT
        client = Client(str(shim.socket), str(shim.kubelet))
        staging = client.staging_path("vol-1")
        target = client.target_path("pod-own")
        stage_seed_publish(client, "vol-1", staging, target)

        published = mounted_at(target)
        assert published is not None
        assert (published.context is not None) == context_applied, published
        volume_is_the_pods_own(confined, target)

        client.unpublish("vol-1", target)
        client.unstage("vol-1", staging)
        assert mounted_at(target) is None and mounted_at(staging) is None
        assert shim.context() == AGENT_CONTEXT and shim.proc.poll() is None
    except Exception as err:  # noqa: BLE001 - reported below together with the denials, which explain it
        failure = "".join(traceback.format_exception(err))
    finally:
        if client:
            client.close()
        if shim.proc:
            output = shim.stop()
        backend.stop(0)
    denials = agent_denials(log.wait_for("avc:", timeout=1.0))
    log.close()
    assert not denials and failure is None, (
        f"{len(denials)} AVC denial(s) of {DOMAIN} during the lifecycle (each a rule the module lacks):\n"
        + "\n".join(denials) + (f"\n--- the lifecycle failed ---\n{failure}" if failure else "")
        + f"\n--- shim output ---\n{output}")
