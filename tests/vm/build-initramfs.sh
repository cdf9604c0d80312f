#!/usr/bin/env bash
# Builds the common part of the test VMs from Debian 12 packages only
# (apt-get download + dpkg-deb -x), cached under target/vm-cache:
#
#   target/vm-cache/vmlinuz        Debian's cloud kernel (linux-image-cloud-amd64)
#   target/vm-cache/base.cpio.gz   busybox-static, nbd-client, drbd-utils (8.4
#                                  userland), their shared libraries, the
#                                  kernel modules (decompressed: busybox insmod
#                                  cannot read .ko.xz/.ko.zst) and /init
#
# A scenario adds a second, small archive (its /scenario.sh and binaries; see
# run-vm.sh); the kernel unpacks concatenated cpio archives in order.
# Idempotent: rebuilds base.cpio.gz only when this script or guest/init changed.
# Needs apt lists (tests/vm/install-vm-deps.sh runs apt-get update).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${VM_CACHE:-${CARGO_TARGET_DIR:-$root/target}/vm-cache}"
case "$cache" in /*) ;; *) cache="$root/$cache" ;; esac
mkdir -p "$cache/debs"

# Several test processes may ask at once: one builds, the others wait.
exec 9>"$cache/.build.lock"
flock 9

stamp_src="$(cat "$0" "$here/guest/init" | sha256sum | cut -d' ' -f1)"
if [ -f "$cache/base.cpio.gz" ] && [ -f "$cache/vmlinuz" ] \
   && [ "$(cat "$cache/base.stamp" 2>/dev/null)" = "$stamp_src" ]; then
  exit 0
fi

kernel_meta=linux-image-cloud-amd64
kernel_pkg="$(apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ && !p {p=$2} END {print p}')"
[ -n "$kernel_pkg" ] || {
  echo "cannot resolve $kernel_meta to a kernel package: run tests/vm/install-vm-deps.sh (apt-get update) first" >&2
  exit 1
}
kver="${kernel_pkg#linux-image-}"

# nbd-client's libnl libraries are usually not on the host; everything else
# it and drbd-utils link against is part of a Debian 12 base system and is
# taken from the host via ldd below.
packages=("$kernel_pkg" busybox-static nbd-client drbd-utils libnl-3-200 libnl-genl-3-200)

download() {
  local pkg="$1"
  if ! compgen -G "$cache/debs/${pkg}_*.deb" >/dev/null; then
    (cd "$cache/debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >/dev/null) || {
      echo "apt-get download $pkg failed (run tests/vm/install-vm-deps.sh for apt-get update)" >&2
      exit 1
    }
  fi
}
for p in "${packages[@]}"; do download "$p"; done

pkgroot="$cache/pkgroot"
rm -rf "$pkgroot"
mkdir -p "$pkgroot"
for p in "${packages[@]}"; do
  deb="$(ls -1 "$cache/debs/${p}"_*.deb | sort -V | tail -n1)"
  dpkg-deb -x "$deb" "$pkgroot"
done

stage="$cache/base-root"
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,lib,lib64,lib/modules,lib/drbd,etc,proc,sys,dev,tmp,run,var/lock,var/lib/drbd,usr/bin,usr/sbin}

# The kernel and the modules the guest loads.
cp "$pkgroot/boot/vmlinuz-$kver" "$cache/vmlinuz.new"
moddir="$pkgroot/lib/modules/$kver/kernel"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         failover net_failover virtio_net loop nbd lru_cache libcrc32c drbd; do
  f="$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) | head -n1)"
  if [ -z "$f" ]; then
    # Built into this kernel (or absent): init skips missing modules.
    continue
  fi
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$stage/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$stage/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$stage/lib/modules/$m.ko" ;;
    *) cp "$f" "$stage/lib/modules/$m.ko" ;;
  esac
done
for m in nbd drbd virtio_net; do
  [ -f "$stage/lib/modules/$m.ko" ] || { echo "kernel $kver has no $m module" >&2; exit 1; }
done

# Userland.
cp "$pkgroot/bin/busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$pkgroot/sbin/nbd-client" "$stage/sbin/"
cp "$pkgroot/sbin/drbdadm" "$pkgroot/sbin/drbdsetup" "$pkgroot/sbin/drbdmeta" "$stage/sbin/"
cp "$pkgroot"/lib/drbd/drbdadm-84 "$pkgroot"/lib/drbd/drbdsetup-84 "$stage/lib/drbd/"
cp "$here/guest/init" "$stage/init"
chmod 755 "$stage/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"
: >"$stage/etc/drbd.conf"

# Shared libraries of every dynamic binary, looked up in the extracted
# packages first, then on the host (also Debian 12).
libpath="$pkgroot/lib/x86_64-linux-gnu:$pkgroot/usr/lib/x86_64-linux-gnu"
bash "$here/copy-libs.sh" "$stage" "$libpath" \
  "$stage/sbin/nbd-client" "$stage/sbin/drbdadm" "$stage/sbin/drbdsetup" "$stage/sbin/drbdmeta" \
  "$stage/lib/drbd/drbdadm-84" "$stage/lib/drbd/drbdsetup-84"

(cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet) \
  | gzip -1 >"$cache/base.cpio.gz.new"
mv "$cache/vmlinuz.new" "$cache/vmlinuz"
mv "$cache/base.cpio.gz.new" "$cache/base.cpio.gz"
echo "$kver" >"$cache/kernel.version"
echo "$stamp_src" >"$cache/base.stamp"
echo "built $cache/base.cpio.gz ($(du -h "$cache/base.cpio.gz" | cut -f1)) for kernel $kver" >&2
