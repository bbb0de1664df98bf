# ari-broadcast-proxy. Configure it with flags or the ARI_PROXY_* environment variables:
#   ARI_PROXY_UPSTREAM, ARI_PROXY_USERNAME, ARI_PROXY_PASSWORD, ARI_PROXY_LISTEN,
#   ARI_PROXY_BROADCAST_APP
# The image also carries the example applications: python -m examples.racing_app --help
#
# Base: Debian 13 (trixie) slim with Debian's own python3 (3.13), the proxy in a venv at
# /opt/venv. Debian's python3 rather than python:3.x-slim: it is one `apt-get install` on the
# plain Debian image, which can be made from Debian's mirror alone (scripts/docker-engine does,
# where no image registry is reachable), and it gets Debian's security updates.
#
# Builds with the legacy builder (docker.io 20.10 + docker-compose 1.29) and with BuildKit.
FROM debian:trixie-slim AS python
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# ---- build stage: the venv. Nothing of this stage but /opt/venv reaches the image.
FROM python AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
# docker/pip-settings/ (pip.conf and the CA bundle it names) exists only where the machine's pip
# needs settings to reach an index (scripts/docker-engine pip-settings writes it; git ignores
# it); elsewhere the pattern matches nothing and pip uses its defaults. Dependencies first, from
# pyproject.toml alone, so a change to the code only redoes the last two steps.
COPY pyproject.toml docker/pip-setting[s] /build/
RUN if [ -f /build/pip.conf ]; then export PIP_CONFIG_FILE=/build/pip.conf; fi \
    && python3 -c 'import tomllib; p = tomllib.load(open("/build/pyproject.toml", "rb")); print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' \
        >/build/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /build/requirements.txt
COPY README.md /build/
COPY ari_broadcast_proxy/ /build/ari_broadcast_proxy/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        --no-index --no-deps --no-build-isolation /build \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check setuptools

# ---- the image (the label is this stage's only: the Docker test prunes untagged earlier builds
# of the image by it, and the build stage's cached layers stay)
FROM python
LABEL org.opencontainers.image.title="ari-broadcast-proxy"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A user of its own: Debian's base-passwd already has a system user `proxy` (uid 13).
RUN useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ari-broadcast-proxy
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples/ ./examples/
USER ari-broadcast-proxy
ENTRYPOINT ["ari-broadcast-proxy"]
