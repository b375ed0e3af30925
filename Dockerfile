# syntax=docker/dockerfile:1
# One image for `run` (the node DaemonSet), `csi` (the proxy sidecar), `controller` and the offline commands.
# docs/image.md: defaults, size, what is left out and why, building without a registry, pushing.
#
# Build stage: a venv against Debian's Python, dependencies in their own layer (a source change reuses it and
# downloads nothing), then the project with its C relabel walker and its C YAML reader (on libyaml).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev python3-selinux gcc libc6-dev libyaml-dev xfsprogs \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Behind a TLS-intercepting proxy: --build-arg PIP_CERT=/path/in/build/bundle.pem with that bundle mounted
# (podman build -v HOST_BUNDLE:/path/in/build/bundle.pem:ro). Unset, pip uses its own CA list.
ARG PIP_CERT
COPY pyproject.toml ./
# The dependency layer: only pyproject.toml's [project].dependencies, and the build backend, so that the
# project itself installs below with --no-build-isolation and no download.
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt \
      'setuptools>=77' wheel
COPY setup.py README.md LICENSE ./
COPY agent ./agent
COPY csi_shim ./csi_shim
# Then nothing that does not run: the installer and build backend, the C source (the wheel carries it for
# sdists), the symbol tables of the wheels' compiled modules (2.6 MB), pyroute2's console scripts (DHCP client
# and server detector, ss2: not for a privileged host-network container), the venv's activation scripts, and
# bytecode (the final stage compiles what is imported).
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip uninstall -y --disable-pip-version-check wheel packaging setuptools pip \
 && cd /opt/venv \
 && find . -name '*.so' -exec strip --strip-unneeded {} + \
 && rm -f bin/activate* bin/Activate.ps1 bin/ss2 bin/pyroute2-* bin/dhcp-server-detector \
 && find . \( -name '*.c' -o -name '*.h' \) -delete \
 && find . -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf lib/python3*/site-packages/_distutils_hack lib/python3*/site-packages/distutils-precedence.pth

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="selinux-mount-agent" \
      org.opencontainers.image.description="SELinux volume labelling for Kubernetes nodes: context= mounts, race-safe relabel, conflicts, AVC denials" \
      org.opencontainers.image.licenses="Apache-2.0"
# The built-in driver runs losetup and blkid (mount, util-linux), mkfs.ext4 (e2fsprogs) and mkfs.xfs. xfsprogs
# is not installed: its xfs_scrub pulls in libicu (36 MB); mkfs.xfs and the two libraries it links come alone.
# checkpolicy and semodule-utils (1 MB) let `policy generate --build` make .pp modules here.
# libyaml-0-2 (150 KB) is what the compiled YAML reader (agent.parsing._yaml) links to.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-selinux mount util-linux e2fsprogs libinih1 liburcu8 checkpolicy semodule-utils libyaml-0-2 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
      /usr/lib/python3.11/test /usr/lib/python3.11/pydoc_data \
 && find /usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} + \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/selinux-mount-agent
COPY --from=build /usr/sbin/mkfs.xfs /usr/sbin/mkfs.xfs
COPY --from=build /opt/venv /opt/venv
# Bytecode for the modules the commands and servers import, and no other (all of the standard library's and
# the venv's is 20 MB): a start compiles nothing it needs, and the image stays small.
RUN /opt/venv/bin/python -c "import sys, importlib, py_compile; from agent.cli.main import SUBCOMMANDS; \
[importlib.import_module(name) for name in SUBCOMMANDS + ['agent.daemon', 'agent.apiclient.client', 'agent.conflict_watch', \
 'agent.avc.watcher', 'agent.avc.netlink', 'agent.relabel.volume', 'csi_shim.server', 'csi_shim.proxy']]; \
[py_compile.compile(m.__file__, doraise=True) for m in list(sys.modules.values()) \
 if (getattr(m, '__file__', None) or '').startswith(('/usr/lib/python3', '/opt/venv/')) and m.__file__.endswith('.py')]"
# Defaults for a container, under the one writable volume: state and the CSI socket at absolute paths, metrics
# and health on every address (a port published from the container is reachable). Flags override them; the
# DaemonSet passes its own.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    SELINUX_MOUNT_AGENT_STATE_DIR=/var/lib/selinux-mount-agent \
    SELINUX_MOUNT_AGENT_CSI_ENDPOINT=unix:///var/lib/selinux-mount-agent/csi.sock \
    SELINUX_MOUNT_AGENT_METRICS_ADDRESS=0.0.0.0:9820
VOLUME /var/lib/selinux-mount-agent
WORKDIR /var/lib/selinux-mount-agent
# Non-root by default: the controller and the offline commands need nothing more. The node DaemonSet sets
# runAsUser: 0 (it mounts), the proxy sidecar too (added capabilities reach only root in Kubernetes runtimes).
USER 65532:65532
EXPOSE 9820
# No HEALTHCHECK: one image runs three servers (`run` answers /healthz on 9820, `controller` on its own
# --metrics-address, `csi` serves only a unix socket), OCI images cannot carry one (podman drops it), and
# Kubernetes ignores it: deploy/ gives each container its own probe.
ENTRYPOINT ["/opt/venv/bin/selinux-mount-agent"]
CMD ["run"]
