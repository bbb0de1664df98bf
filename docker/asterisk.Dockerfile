# Asterisk 22 from Debian sid: the same packages scripts/asterisk-sandbox installs in its chroot.
# sid's asterisk-modules ships res_stasis_broadcast.so and app_stasis_broadcast.so, so native
# StasisBroadcast and the proxy can be compared on one server.
#
# No configuration is baked in: docker-compose.yml mounts ./asterisk-conf at /etc/asterisk.
FROM debian:sid

# -o Acquire::Check-Valid-Until=false: the mirrors' sid Release file can be past its
# Valid-Until date, and apt refuses it without the option.
#
# Keep the package list identical to PACKAGES in scripts/asterisk-sandbox
# (tests/unit/test_compose.py checks that they match).
#
# The packaged state folders belong to the asterisk user; Asterisk runs as root here, as in the
# sandbox, which chowns the same folders.
RUN apt-get -o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 update \
    && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
        -o Acquire::Retries=3 install -y --no-install-recommends \
        asterisk asterisk-modules \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && chown -R root:root /var/lib/asterisk /var/spool/asterisk /var/log/asterisk /var/cache/asterisk

CMD ["/usr/sbin/asterisk", "-f", "-U", "root", "-n"]
