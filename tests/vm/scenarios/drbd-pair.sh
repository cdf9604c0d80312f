# Scenario: a DRBD 8.4 pair across two VMs (eth1, a QEMU datagram link),
# protocol C, backing device a loop device over a file in tmpfs.
#
#   vm a: promotes, writes 1 KiB O_DIRECT|O_SYNC, tells b, then dies hard
#         (poweroff -f without `drbdadm down`, like a crashed host);
#   vm b: checks that its own promotion is refused while a is Primary (exit
#         11, "(-1) Multiple primaries not allowed by config"), then waits for
#         the connection loss, promotes and reads a's write back.
#
# Parameters: vmt_role (a|b), vmt_ip1 (this VM), vmt_peer (the other VM),
# vmt_hostname (vm-a|vm-b: DRBD's `on` sections match the node name).
name="drbd-$vmt_role"
export PATH="$PATH:/lib/drbd"
fail() { echo "VMTEST FAIL $name $*"; cat /proc/drbd 2>/dev/null; exit 1; }
now() { cut -d' ' -f1 /proc/uptime; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  t="$1"; shift
  i=0
  while ! "$@"; do
    i=$((i + 1))
    [ $i -le $((t * 5)) ] || return 1
    sleep 0.2
  done
}
case "$vmt_role" in a|b) ;; *) fail "vmt_role must be a or b" ;; esac
[ "$vmt_role" = a ] && addr_a="$vmt_ip1" addr_b="$vmt_peer" || addr_a="$vmt_peer" addr_b="$vmt_ip1"

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
connected() { [ "$(drbdadm cstate hb 2>/dev/null)" = Connected ]; }
wait_for 60 connected || fail "not Connected after 60 s: cstate $(drbdadm cstate hb)"
echo "connected at $(now)"

if [ "$vmt_role" = a ]; then
  # Fresh pair: skip the initial sync (both sides are zeroes anyway).
  out="$(drbdadm -- --clear-bitmap new-current-uuid hb 2>&1)" || fail "new-current-uuid: $out"
  uptodate() { [ "$(drbdadm dstate hb 2>/dev/null)" = UpToDate/UpToDate ]; }
  wait_for 30 uptodate || fail "disks not UpToDate/UpToDate: $(drbdadm dstate hb)"
  out="$(drbdadm primary hb 2>&1)" || fail "drbdadm primary exited $?: $out"
  echo "role $(drbdadm role hb)"
  out="$(guest-io write /dev/drbd0 4096 1024 42)" || fail "write on Primary: $out"
  echo "$out"
  # Hold Primary until b has seen its own promotion refused.
  msg="$(timeout 60 nc -l -p 9000)"
  [ "$msg" = refused-checked ] || fail "no word from vm-b within 60 s (got '$msg')"
  echo "VMTEST PASS $name"
  echo "crashing at $(now): poweroff -f without drbdadm down"
  poweroff -f
  sleep 10
fi

# role b
uptodate() { [ "$(drbdadm dstate hb 2>/dev/null)" = UpToDate/UpToDate ]; }
wait_for 30 uptodate || fail "disks not UpToDate/UpToDate: $(drbdadm dstate hb)"
peer_primary() { [ "$(drbdadm role hb 2>/dev/null)" = Secondary/Primary ]; }
wait_for 60 peer_primary || fail "peer never became Primary: role $(drbdadm role hb)"
out="$(drbdadm primary hb 2>&1)"
rc=$?
echo "$out"
echo "refused promotion: exit code $rc"
[ $rc -eq 11 ] || fail "drbdadm primary while the peer is Primary exited $rc, expected 11"
case "$out" in
  *"State change failed: (-1) Multiple primaries not allowed by config"*) ;;
  *) fail "unexpected refusal message: $out" ;;
esac
echo refused-checked | nc "$addr_a" 9000 || fail "cannot tell vm-a (nc to $addr_a:9000)"
t0="$(now)"
not_connected() { ! connected; }
wait_for 60 not_connected || fail "still Connected 60 s after the peer's crash"
t1="$(now)"
echo "peer loss seen after $(awk "BEGIN{print $t1 - $t0}") s: cstate $(drbdadm cstate hb), role $(drbdadm role hb), dstate $(drbdadm dstate hb)"
out="$(drbdadm primary hb 2>&1)" || fail "promotion after the peer's crash exited $?: $out"
echo "promoted at $(now): role $(drbdadm role hb)"
out="$(guest-io verify /dev/drbd0 4096 1024 42)" || fail "the Primary's write is not on the survivor: $out"
echo "$out"
echo "VMTEST PASS $name"
