# ari-broadcast-proxy. Configure it with flags or the ARI_PROXY_* environment variables:
#   ARI_PROXY_UPSTREAM, ARI_PROXY_USERNAME, ARI_PROXY_PASSWORD, ARI_PROXY_LISTEN,
#   ARI_PROXY_BROADCAST_APP
# The image also carries the example applications: python -m examples.racing_app --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ari_broadcast_proxy/ ./ari_broadcast_proxy/
COPY examples/ ./examples/
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home --shell /usr/sbin/nologin proxy

USER proxy
ENTRYPOINT ["ari-broadcast-proxy"]
