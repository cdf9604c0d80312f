# Scenario: OUR http-disk-server with `--arbiter drbd` on a DRBD 8.4 pair
# across two VMs (eth1, a QEMU datagram link), explicit promotion,
# derived may_promote (8.4 reports none), small sleep factor.
#
#   both: DRBD up and UpToDate/UpToDate, then http-disk-server on
#         /dev/drbd0 at $vmt_ip1:8076, started together (a tells b "go");
#   the winner (the one whose server serves): PUT 1 KiB over HTTP, read
#         them back, wait for the loser's word, then die hard (poweroff -f);
#   the loser: its server must not serve while the winner does; if it tried
#         to promote, the refusal (exit 11) must be classified in its log;
#         either way a second server whose events2 view hides the peer's
#         Primary role (the race window, made deterministic) runs the real
#         `drbdsetup primary 0`: refused by the kernel, classified "refused";
#         after the winner's death its server promotes and serves the
#         winner's bytes (ranged GET), then SIGTERM: its server demotes
#         with `drbdsetup secondary 0`.
#
# DRBD 8.4 vs 9, and what this does not test: 8.4 has no quorum, so the
# derived may_promote only means "no peer is Primary that I can see"; a
# partitioned 8.4 pair would both promote (split brain). Here the peer is
# really dead (powered off), which is the case 8.4 can handle. Quorum loss,
# three nodes, tie-breakers and DRBD 9's own may_promote stay tested only
# against fixtures (tests/tests/drbd_arbiter.rs, linstor/).
#
# DRBD 8.4 specifics exercised here: http-disk-server detects 8.4 from
# /proc/drbd (--drbd-kernel auto), addresses `drbdsetup primary|secondary`
# by the minor of /dev/drbd0 and runs `events2` without `--full`.
#
# busybox wget is used without -T: Debian 12's busybox (1.35) is built
# without FEATURE_WGET_TIMEOUT and `wget -T N` dereferences NULL (SIGSEGV);
# `timeout N wget` bounds it instead.
#
# Parameters: vmt_role (a|b), vmt_ip1, vmt_peer, vmt_hostname (vm-a|vm-b).
name="drbd-http-$vmt_role"
log=/tmp/http-disk-server.log
fail() {
  echo "VMTEST FAIL $name $*"
  cat /proc/drbd 2>/dev/null
  echo "--- $log ---"; cat "$log" 2>/dev/null
  exit 1
}
. /vmtest/drbd.sh
drbd_pair_up
# Start both servers at (nearly) the same moment.
if [ "$vmt_role" = a ]; then
  tell_go() { echo go | timeout 5 nc "$addr_b" 9001 2>/dev/null; }
  wait_for 30 tell_go || fail "cannot tell vm-b to go"
else
  msg="$(timeout 60 nc -l -p 9001)"
  [ "$msg" = go ] || fail "no go from vm-a ($msg)"
fi
echo "starting http-disk-server at $(now)"
http-disk-server --disk /dev/drbd0 --ip "$vmt_ip1" --port 8076 --arbiter drbd \
  --drbd-resource hb --drbd-promote explicit --drbd-derive-may-promote \
  --drbd-sleep-factor 0.1 --peer-url "peer=http://$vmt_peer:8076" \
  --allow-unauthenticated \
  -v >"$log" 2>&1 &
server_pid=$!
me="http://$vmt_ip1:8076"
peer_url="http://$vmt_peer:8076"
role_of() { timeout 3 wget -q -O - "$1/v1/status" 2>/dev/null | sed -n 's/.*"role":"\([a-z]*\)".*/\1/p'; }
alive() { kill -0 "$server_pid" 2>/dev/null || fail "http-disk-server exited"; }
decided() { alive; [ "$(role_of "$me")" = serving ] || [ "$(role_of "$peer_url")" = serving ]; }
wait_for 90 decided || fail "nobody serves after 90 s: me $(role_of "$me"), peer $(role_of "$peer_url"), role $(drbdadm role hb)"
detected_84() { grep -q "kernel=V84 { minor: 0 }" "$log"; }
wait_for 30 detected_84 || fail "http-disk-server did not detect DRBD 8.4 / minor 0"
sleep 2
mine="$(role_of "$me")"; theirs="$(role_of "$peer_url")"
echo "roles at $(now): me $mine, peer $theirs, drbd $(drbdadm role hb)"
[ "$mine" = serving ] && [ "$theirs" = serving ] && fail "both serve"
# 1 KiB of guest-io's pattern (seed 84) at 4096, PUT and GET over HTTP.
if [ "$mine" = serving ]; then
  out="$(guest-io http-put "$vmt_ip1:8076" 4096 1024 84)" || fail "PUT through HTTP: $out"
  echo "$out"
  out="$(guest-io http-verify "$vmt_ip1:8076" 4096 1024 84)" || fail "read back: $out"
  echo "$out"
  msg="$(timeout 90 nc -l -p 9000)"
  [ "$msg" = checked ] || fail "no word from the loser ($msg)"
  echo "VMTEST PASS $name"
  echo "winner crashing at $(now)"
  poweroff -f
  sleep 10
fi
# The loser.
grep -q "DRBD role held: serving" "$log" && fail "the loser served while the winner did"
if grep -q "promotion failed" "$log"; then
  grep "promotion failed" "$log" | head -n 3
  grep "promotion failed" "$log" | grep -q "drbdsetup primary 0. refused the state change (exit 11)" \
    || fail "refused promotion not classified as refused with exit 11"
  echo "refused promotion seen and classified: exit 11, lost"
else
  echo "this server did not try to promote (it saw the peer Primary first)"
fi
# Whoever lost the start race, make the refusal happen for sure: a second
# server whose events2 view missed the peer's promotion (connection role
# Primary shown as Secondary, the race window) runs the real `drbdsetup
# primary 0`; the 8.4 kernel refuses (exit 11) and the log must say "lost".
cat >/bin/drbdsetup-stale <<'SH'
#!/bin/sh
if [ "$1" = events2 ]; then
  drbdsetup "$@" | while IFS= read -r l; do echo "${l/ role:Primary/ role:Secondary}"; done
else
  exec drbdsetup "$@"
fi
SH
chmod 755 /bin/drbdsetup-stale
log2=/tmp/http-disk-server-stale.log
http-disk-server --disk /dev/drbd0 --ip "$vmt_ip1" --port 8077 --arbiter drbd \
  --drbd-resource hb --drbd-promote explicit --drbd-derive-may-promote \
  --drbd-sleep-factor 0.1 --drbdsetup /bin/drbdsetup-stale --allow-unauthenticated \
  -v >"$log2" 2>&1 &
stale_pid=$!
refused() { grep -q "promotion failed" "$log2"; }
wait_for 60 refused || { kill -9 "$stale_pid"; log="$log2"; fail "the stale-view server never tried to promote"; }
kill -9 "$stale_pid"
grep "promotion failed" "$log2" | head -n 1
grep "promotion failed" "$log2" | head -n 1 \
  | grep "drbdsetup-stale primary 0. refused the state change (exit 11)" \
  | grep -q "Multiple primaries not allowed by config" \
  || { log="$log2"; fail "the kernel's refusal was not classified as refused (exit 11)"; }
grep -q "DRBD role held: serving" "$log2" && { log="$log2"; fail "the stale-view server served"; }
echo "refused promotion classified: exit 11, lost (real 8.4 kernel, our runner)"
[ "$(drbdadm role hb)" = Secondary/Primary ] || fail "role $(drbdadm role hb), expected Secondary/Primary"
# The standby's hint (8.4 names every peer "peer" in events2: --peer-url peer=URL).
timeout 3 wget -q -O - "$me/v1/status" | grep -o '"serving_url":"[^"]*"' || echo "no serving_url hint in status"
# What 8.4's drbdsetup makes of `secondary --force` (DRBD 9 only), on a Secondary.
out="$(drbdsetup secondary --force 0 2>&1)"; echo "drbdsetup secondary --force 0 on 8.4: exit $? $out" | head -n 3
tell_checked() { echo checked | timeout 5 nc "$vmt_peer" 9000 2>/dev/null; }
wait_for 60 tell_checked || fail "cannot tell the winner"
t0="$(now)"
serving() { alive; [ "$(role_of "$me")" = serving ]; }
wait_for 90 serving || fail "did not take over within 90 s of the winner's crash: role $(drbdadm role hb), cstate $(drbdadm cstate hb)"
echo "took over $(awk "BEGIN{print $(now) - $t0}") s after the crash: role $(drbdadm role hb)"
out="$(guest-io http-verify "$vmt_ip1:8076" 4096 1024 84)" || fail "the winner's write is not served after failover: $out"
echo "$out"
grep -E "promot|primary" "$log" | tail -n 5
# An orderly shutdown demotes through `drbdsetup secondary 0` (8.4 form).
kill -TERM "$server_pid"
stopped() { ! kill -0 "$server_pid" 2>/dev/null; }
wait_for 30 stopped || fail "http-disk-server still running 30 s after SIGTERM"
grep -q "demoted to Secondary" "$log" || fail "no 'demoted to Secondary' after SIGTERM"
[ "$(drbdadm role hb)" = Secondary/Unknown ] || fail "role $(drbdadm role hb) after SIGTERM, expected Secondary/Unknown"
echo "SIGTERM: demoted, role $(drbdadm role hb)"
echo "VMTEST PASS $name"
