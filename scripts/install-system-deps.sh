#!/usr/bin/env bash
# Debian packages the tests start for real: PostgreSQL, MariaDB, Slurm + munge, Chromium, Java;
# and libmariadb-dev + pkg-config, which mysqlclient (the tests' MySQLdb) is built against.
# iproute2 for the network lab (ip netns, bridges, veth pairs).
# Installs only what is missing, so a second run costs nothing.
set -euo pipefail
PACKAGES=(postgresql mariadb-server slurm-wlm munge chromium default-jre-headless procps
          libmariadb-dev pkg-config gcc iproute2)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
