#!/usr/bin/env bash
# Installs the system packages the tests, benchmarks and demo talk to: real NBD
# clients (libnbd-bin, python3-libnbd, qemu-io, fio), the no-proxy baseline
# (nbdkit), curl, iproute2 for network namespaces, and socat (the benchmark's
# byte relay). Idempotent.
set -euo pipefail

packages=(libnbd-bin python3-libnbd python3-prometheus-client nbdkit nbdfuse fio curl iproute2 procps socat)
# qemu-io: the machine may carry a newer qemu-utils than Debian's; keep it.
command -v qemu-io >/dev/null 2>&1 || packages+=(qemu-utils)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for tool in nbdinfo nbdcopy nbdkit fio qemu-io curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
/usr/bin/python3 -c 'import nbd' || { echo "python3-libnbd not importable by /usr/bin/python3" >&2; exit 1; }

# The VM tests (kernel NBD client, DRBD 8.4): qemu-system-x86 at qemu-utils'
# version, cpio, and friends.
bash "$(dirname "$0")/../tests/vm/install-vm-deps.sh"
