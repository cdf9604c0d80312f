#!/usr/bin/env bash
# Installs what the VM tests need on the host: qemu-system-x86_64 (TCG only;
# the guests never use KVM), cpio and gzip to pack the initramfs, and nbdkit
# as a reference NBD server for the harness self-check. Idempotent.
#
# The host carries qemu-utils 10.x from bookworm-backports (qemu-io, qemu-img,
# qemu-nbd are used by other tests). Debian 12's own qemu-system-x86 (7.2)
# depends on qemu-system-common/qemu-system-data 7.2, which apt could satisfy
# only by downgrading or mixing versions with qemu-utils. Installing the
# qemu-system-x86 of the same version from bookworm-backports keeps the whole
# qemu family on one version. Backports are pinned at priority 100 by Debian's
# default Release file (NotAutomatic/ButAutomaticUpgrades), so enabling them
# changes nothing else on the system.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

utils_version() {
  dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true
}

need_update=1
apt_update() {
  if [ "$need_update" -eq 1 ]; then
    $sudo apt-get update -qq
    need_update=0
  fi
}

# 1. Make sure bookworm-backports is a known suite when qemu-utils came from it
#    (or when nothing qemu is installed yet: we then take backports too, so a
#    later qemu-utils install stays consistent).
uv="$(utils_version)"
if [ -z "$uv" ] || [[ "$uv" == *bpo12* ]]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  from_backports=1
else
  from_backports=0
fi

# 2. qemu-system-x86 at the same version as qemu-utils.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  apt_update
  if [ "$from_backports" -eq 1 ]; then
    uv="$(utils_version)"
    # -t lets the dependencies (seabios, qemu-system-common/-data) come from
    # backports too. Prefer the exact version of the installed qemu-utils; if
    # backports moved on, take both packages at the new version together.
    if [ -z "$uv" ] || ! $sudo apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports "qemu-system-x86=$uv"; then
      $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports \
        qemu-system-x86 qemu-utils
    fi
  else
    $sudo apt-get install -y -qq --no-install-recommends qemu-system-x86
  fi
fi

# 3. Tools the harness runs on the host.
missing=()
for p in cpio gzip xz-utils zstd nbdkit; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 4. Check: the VM runner and the qemu tools other tests use still work.
for tool in qemu-system-x86_64 qemu-io qemu-img qemu-nbd cpio gzip xz zstd nbdkit apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
qemu-io --version >/dev/null
qemu-system-x86_64 --version | sed -n 1p
qemu-io --version | sed -n 1p
