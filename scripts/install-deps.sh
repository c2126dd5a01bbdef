#!/usr/bin/env bash
# Install everything swapvisor needs to build, test, fuzz and benchmark on Debian 12 (root).
# clang-16 + libfuzzer-16-dev, not clang-14: clang 14 cannot compile libstdc++-12's
# std::expected (our Result<T>), see tests/fuzz/README.md.
# libblkid-dev: what a device holds before mkswap / format (swap/data_probe.cpp);
# libsystemd-dev: sd_notify readiness of serve (vmm/daemon/notify.cpp);
# help2man: the man page; systemd: systemd-analyze verify of the unit; dpkg-dev:
# dpkg-shlibdeps for the CPack .deb (packaging/README.md).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake pkg-config git ca-certificates python3 \
  liburing-dev libboost-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev \
  libxxhash-dev liblz4-dev libzstd-dev libseccomp-dev libgtest-dev libgmock-dev libbenchmark-dev \
  fio qemu-system-x86 util-linux e2fsprogs gnuplot-nox linux-perf \
  libnbd-dev libnbd-bin nbdkit qemu-utils gnutls-bin \
  libblkid-dev libsystemd-dev help2man systemd dpkg-dev \
  clang-16 libclang-rt-16-dev libfuzzer-16-dev >/dev/null
echo "install-deps: done"
