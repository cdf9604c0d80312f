# Shared by the DRBD scenarios: sourced as /vmtest/drbd.sh (run-vm.sh copies
# tests/vm/scenarios/lib/ into every VM). The scenario defines `fail` first
# and sets vmt_role (a|b), vmt_ip1 (this VM) and vmt_peer (the other VM).

export PATH="$PATH:/lib/drbd"
now() { cut -d' ' -f1 /proc/uptime; }

# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until SECONDS of
# real time passed (counted on the clock: each try may itself take seconds).
wait_for() {
  t="$1"; shift
  end=$(( $(cut -d. -f1 /proc/uptime) + t ))
  while ! "$@"; do
    [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

connected() { [ "$(drbdadm cstate hb 2>/dev/null)" = Connected ]; }
uptodate() { [ "$(drbdadm dstate hb 2>/dev/null)" = UpToDate/UpToDate ]; }

# drbd_pair_up: resource hb (protocol C, /dev/drbd0 on a 32 MiB loop device
# in tmpfs) between vm-a and vm-b, Connected and UpToDate/UpToDate on both
# sides. Sets addr_a and addr_b.
drbd_pair_up() {
  case "$vmt_role" in a|b) ;; *) fail "vmt_role must be a or b" ;; esac
  if [ "$vmt_role" = a ]; then
    addr_a="$vmt_ip1" addr_b="$vmt_peer"
  else
    addr_a="$vmt_peer" addr_b="$vmt_ip1"
  fi
  cat >/etc/drbd.conf <<CONF
global { usage-count no; }
resource hb {
  protocol C;
  device /dev/drbd0;
  disk /dev/loop0;
  meta-disk internal;
  net {
    # Notice a dead peer in about 3 s: timeout < ping-int and < connect-int.
    ping-int 3;
    ping-timeout 5;
    timeout 20;
    connect-int 3;
  }
  on vm-a { address $addr_a:7789; }
  on vm-b { address $addr_b:7789; }
}
CONF
  truncate -s 32M /tmp/backing.img
  losetup /dev/loop0 /tmp/backing.img || fail "losetup"
  out="$(drbdadm -- --force create-md hb 2>&1)" || fail "create-md: $out"
  out="$(drbdadm up hb 2>&1)" || fail "drbdadm up: $out"
  head -n1 /proc/drbd
  wait_for 60 connected || fail "not Connected after 60 s: cstate $(drbdadm cstate hb)"
  echo "connected at $(now)"
  if [ "$vmt_role" = a ]; then
    # Fresh pair: skip the initial sync (both sides are zeroes anyway).
    out="$(drbdadm -- --clear-bitmap new-current-uuid hb 2>&1)" || fail "new-current-uuid: $out"
  fi
  wait_for 30 uptodate || fail "disks not UpToDate/UpToDate: $(drbdadm dstate hb)"
}
