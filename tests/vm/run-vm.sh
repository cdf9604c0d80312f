#!/usr/bin/env bash
# run-vm.sh: boots one test VM (QEMU, TCG only) and streams its serial
# console to stdout. The VM runs a scenario script and powers itself off.
#
#   run-vm.sh --scenario FILE [--file HOST[:GUEST]]... [--param KEY=VALUE]...
#             [--vmnet LOCALPORT:REMOTEPORT] [--mac-suffix NN] [--mem MB]
#             [--timeout SECONDS] [--work DIR]
#
# --scenario  shell script run by the guest's /init as /scenario.sh
# --file      a host file copied into the guest (default GUEST: /bin/<name>);
#             its shared libraries (ldd) are copied too
# --param     passed on the kernel command line as vmt_KEY=VALUE; the
#             scenario sees it as the variable $vmt_KEY
# --vmnet     a second NIC (eth1) on a UDP datagram link between two VMs on
#             127.0.0.1 (both VMs name each other's port)
# --timeout   host-side limit; QEMU is killed after it (exit status 124)
#
# The guest reaches the host's loopback at 10.0.2.2 (QEMU user networking).
# Exit status: QEMU's (0 after the guest's poweroff), 124 on timeout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${VM_CACHE:-${CARGO_TARGET_DIR:-$root/target}/vm-cache}"
case "$cache" in /*) ;; *) cache="$root/$cache" ;; esac

scenario=""
files=()
params=()
vmnet=""
mac_suffix="01"
mem=512
timeout_s=90
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario="$2"; shift 2 ;;
    --file) files+=("$2"); shift 2 ;;
    --param) params+=("$2"); shift 2 ;;
    --vmnet) vmnet="$2"; shift 2 ;;
    --mac-suffix) mac_suffix="$2"; shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "run-vm.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$scenario" ] && [ -f "$scenario" ] || { echo "run-vm.sh: --scenario FILE is required" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || {
  echo "run-vm.sh: qemu-system-x86_64 missing: run tests/vm/install-vm-deps.sh" >&2
  exit 2
}

bash "$here/build-initramfs.sh"

cleanup_work=0
if [ -z "$work" ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/vmtest.XXXXXX")"
  cleanup_work=1
fi
mkdir -p "$work"
overlay="$work/overlay"
rm -rf "$overlay"
mkdir -p "$overlay/bin"
cp "$scenario" "$overlay/scenario.sh"
# Shell helpers the scenarios share, sourced from /vmtest/*.sh.
mkdir -p "$overlay/vmtest"
cp "$here"/scenarios/lib/*.sh "$overlay/vmtest/"
bins=()
for spec in "${files[@]}"; do
  hostf="${spec%%:*}"
  if [ "$spec" = "$hostf" ]; then guestf="/bin/$(basename "$hostf")"; else guestf="${spec#*:}"; fi
  [ -f "$hostf" ] || { echo "run-vm.sh: no such file $hostf" >&2; exit 2; }
  mkdir -p "$(dirname "$overlay$guestf")"
  cp -L --preserve=mode "$hostf" "$overlay$guestf"
  if head -c4 "$hostf" | grep -q 'ELF'; then bins+=("$overlay$guestf"); fi
done
if [ ${#bins[@]} -gt 0 ]; then
  bash "$here/copy-libs.sh" "$overlay" "" "${bins[@]}"
fi
(cd "$overlay" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet) \
  | gzip -1 >"$work/overlay.cpio.gz"
cat "$cache/base.cpio.gz" "$work/overlay.cpio.gz" >"$work/initrd.gz"

append="console=ttyS0 panic=-1 loglevel=4 tsc=reliable no_timer_check"
for p in "${params[@]}"; do append+=" vmt_$p"; done

net=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:00:$mac_suffix)
if [ -n "$vmnet" ]; then
  lport="${vmnet%%:*}"; rport="${vmnet#*:}"
  net+=(-netdev "dgram,id=n1,local.type=inet,local.host=127.0.0.1,local.port=$lport,remote.type=inet,remote.host=127.0.0.1,remote.port=$rport"
        -device "virtio-net-pci,netdev=n1,mac=52:54:00:12:01:$mac_suffix")
fi

status=0
timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 \
  -accel tcg -machine pc -cpu max -smp 1 -m "$mem" \
  -nodefaults -no-user-config -display none -serial stdio -monitor none -no-reboot \
  -kernel "$cache/vmlinuz" -initrd "$work/initrd.gz" -append "$append" \
  "${net[@]}" </dev/null || status=$?
[ "$cleanup_work" -eq 0 ] || rm -rf "$work"
if [ "$status" -eq 124 ]; then
  echo "VMTEST TIMEOUT after ${timeout_s}s (killed by run-vm.sh)"
fi
exit "$status"
