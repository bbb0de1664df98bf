# Valkey for the replicas of the ha variant (docker-compose.ha.yml): the Redis-protocol store
# they share (--cluster-url). Debian trixie's own valkey-server (8.1), on the base image the
# proxy's image already uses, so scripts/docker-engine can make it from Debian's mirror where
# no image registry is reachable.
#
# Nothing is persisted (no RDB snapshots, no AOF): the replicas record again what they carry
# when the store comes back empty (README, "Running several replicas"). The port is the
# compose file's (127.0.0.1:6390, clear of a system Redis on 6379); docker-compose.ha.yml
# passes it, with the healthcheck's.
FROM debian:trixie-slim

# The package's maintainer scripts start no service in a build: the base image's policy-rc.d
# refuses, as in Debian's official images.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends valkey-server \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The package's system user; its home is the working directory (nothing is written there).
USER valkey
WORKDIR /var/lib/valkey
ENTRYPOINT ["valkey-server"]
CMD ["--bind", "127.0.0.1", "--port", "6390", "--save", "", "--appendonly", "no"]
