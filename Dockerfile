# syntax=docker/dockerfile:1
# Multi-stage: build the wheel (with the C relabel walker) against Debian's Python, then install it into a
# small runtime image with Debian's libselinux bindings and the mount tools the local driver needs.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev python3-selinux gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY agent ./agent
COPY csi_shim ./csi_shim
# The venv sees Debian's python3-selinux (libselinux bindings) through the system site packages.
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="selinux-mount-agent" \
      org.opencontainers.image.description="SELinux volume labelling for Kubernetes nodes: context= mounts, race-safe relabel, conflicts, AVC denials" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-selinux mount util-linux e2fsprogs xfsprogs \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1
# The controller and the proxy sidecar run as this user; the node plugin mounts, and its DaemonSet sets
# runAsUser: 0.
USER 65532:65532
EXPOSE 9808
HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9808/healthz', timeout=2); sys.exit(0)"]
ENTRYPOINT ["/opt/venv/bin/selinux-mount-agent"]
CMD ["run"]
