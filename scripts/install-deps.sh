#!/usr/bin/env bash
# Install everything swapvisor needs to build, test and benchmark on Debian 12 (root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config git ca-certificates python3 \
  liburing-dev libboost-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev \
  libxxhash-dev libseccomp-dev libgtest-dev libgmock-dev libbenchmark-dev \
  fio qemu-system-x86 util-linux e2fsprogs gnuplot-nox linux-perf \
  libnbd-dev libnbd-bin nbdkit qemu-utils gnutls-bin >/dev/null
echo "install-deps: done"
