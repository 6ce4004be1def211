# syntax=docker/dockerfile:1
# attnd container image: the daemon alone, run as a non-root user, configured by ATTND_* env vars.
#
# Build (from the repository root; needs no GPU, the CUDA backend is compiled for ATTND_CUDA_ARCHS):
#   docker build -t attnd:0.1.0 .
#   docker build --build-arg ATTND_CUDA_ARCHS="90a;100a" --build-arg JOBS=8 -t attnd:0.1.0 .
# Run beside an engine on one host (socket in a named volume, metrics on 9401):
#   docker run -d --name attnd --gpus '"device=0"' --ipc=shareable \
#     -v attnd-run:/run/attnd -p 127.0.0.1:9401:9401 attnd:0.1.0
# See docs/operations.md (and deploy/compose/compose.yaml, deploy/k8s/) for the whole setup.
#
# Interface of the image:
#   ENTRYPOINT  /usr/local/bin/attnd; CMD adds no flag: every flag comes from an ATTND_<FLAG> env
#               var (docker run ... attnd:0.1.0 --log_level=debug still works: flags win over env).
#   socket      unix:///run/attnd/attnd.sock (ATTND_LISTEN); /run/attnd is a VOLUME, owned by the
#               image's user attnd (uid/gid 10001), so another container can mount it and connect.
#   port 9401   HTTP /healthz, /readyz, /metrics (ATTND_HTTP_LISTEN=0.0.0.0:9401).
#   HEALTHCHECK curl of /readyz on the port of ATTND_HTTP_LISTEN.
#
# Base: NVIDIA's CUDA images on Ubuntu 24.04. NVIDIA publishes no Debian 12 CUDA image; Ubuntu
# 24.04 has the same package names and the same gRPC 1.51 / Protobuf 3.21 as Debian 12, so the
# build stage runs the README's scripts/setup.sh and scripts/build.sh unchanged.

ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=24.04

# ---- build: the same steps as the README (scripts/setup.sh, scripts/build.sh) ------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the package lists change.
COPY scripts/setup.sh scripts/requirements-dev.txt scripts/
RUN ./scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Build options, passed to scripts/build.sh as environment variables (empty = build.sh's default).
ARG ATTND_CUDA=ON
ARG ATTND_CUDA_ARCHS=90a
ARG ATTND_CUDA_HEAD_DIMS=
ARG BUILD_TYPE=Release
ARG JOBS=
RUN BUILD_DIR=build ./scripts/build.sh
# The runtime packages the daemon needs, found from what it is linked against (no -dev package).
RUN ./deploy/docker/runtime-packages.sh build/bin/attnd > build/runtime-packages.txt \
    && cat build/runtime-packages.txt

# ---- runtime: CUDA runtime image + the daemon + its shared libraries ---------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime
LABEL org.opencontainers.image.title="attnd" \
      org.opencontainers.image.description="gRPC attention-offload daemon (paged KV cache, FlashInfer-class kernels)" \
      org.opencontainers.image.documentation="docs/operations.md" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /src/build/runtime-packages.txt /src/deploy/docker/install-runtime-packages.sh /tmp/attnd-install/
RUN /tmp/attnd-install/install-runtime-packages.sh /tmp/attnd-install/runtime-packages.txt \
    && rm -rf /tmp/attnd-install
# A fixed uid/gid so that volumes, pod securityContexts and the engine's group can match it.
RUN groupadd --system --gid 10001 attnd \
    && useradd --system --uid 10001 --gid attnd --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin attnd \
    && install -d -o attnd -g attnd -m 0770 /run/attnd
COPY --from=build /src/build/bin/attnd /usr/local/bin/attnd

# Defaults that work in a container; every other flag keeps the daemon's default. The socket
# directory is group-writable and the socket is created with --socket_mode (see operations.md).
ENV ATTND_LISTEN=unix:///run/attnd/attnd.sock \
    ATTND_HTTP_LISTEN=0.0.0.0:9401 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/run/attnd"]
EXPOSE 9401
USER attnd:attnd
# Ready = backend up and a pool can be created; the port follows ATTND_HTTP_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${ATTND_HTTP_LISTEN##*:}/readyz" || exit 1
# SIGTERM: attnd reports NOT_SERVING, drains in-flight requests, releases every pool, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/attnd"]
CMD []
