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
fail() { echo "VMTEST FAIL $name $*"; cat /proc/drbd 2>/dev/null; exit 1; }
. /vmtest/drbd.sh
drbd_pair_up

if [ "$vmt_role" = a ]; then
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
