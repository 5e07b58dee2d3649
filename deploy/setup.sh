#!/usr/bin/env bash
# Installs every Debian 12 package colo needs to build, test and run.
# Idempotent: quiet and fast when everything is already present.
# Usage (as root): deploy/setup.sh
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config git
  libboost1.81-dev libboost-program-options1.81-dev libboost-json1.81-dev
  libnbd-dev liburing-dev libssl-dev libsystemd-dev libfmt-dev
  libprotobuf-dev protobuf-compiler
  libgtest-dev libgmock-dev
  clang libclang-rt-14-dev
  # real peers for tests and benchmarks
  qemu-utils nbdkit libnbd-bin python3-libnbd fio
  resource-agents iproute2 procps psmisc systemd
  libxml2-utils   # xmllint: the OCF agent's meta-data against ra-api-1.dtd (ocf-tester too)
  prometheus      # promtool check metrics, and a real server scraping the daemons (metrics tests)
  # run
  openssl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: missing packages: ${missing[*]}" >&2
  echo "setup.sh: run as root to install them" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup.sh: done"
