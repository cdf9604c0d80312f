# Scenario: nbd-http-server attaches /dev/nbdN ITSELF inside the guest, its
# upstream an http-disk-server on the host (10.0.2.2), then xhad-style I/O
# through /dev/http-nbd/$vol.
#
# vmt_mode:
#   attach    512-byte blocks, the 260 KiB setinit write, 1 KiB writes and
#             512 B reads (each read back), SIGTERM: exit 0, device detached,
#             link removed;
#   restart   a writer loop holds the device open (guest-io loop) while
#             nbd-http-server is SIGKILLed and started again: same device,
#             no error for the writer;
#   failover  a writer loop runs while the host test kills the serving
#             http-disk-server (told over TCP to vmt_ctl): no error;
#   heartbeat `xha-shim init` (2 hosts) then `xha-shim heartbeat` (xhad's
#             statefile cycle, 1 s interval, 20 s StateFileTimeout) on the
#             device while the host kills the serving http-disk-server (as
#             in failover): exit 0 and no host hurt in the JSON report;
#   bench     for tests/src/bin/bench-kernel-nbd.rs, in one boot: latency
#             through nbd-client on the host's `nbdkit file` (vmt_nbdkit
#             port) and through our device, then the failover stall (as in
#             failover; the longest writer operation).
# Parameters: vmt_urls (comma separated), vmt_size, vmt_seed, vmt_ctl
# (failover, heartbeat: host control port), vmt_after (seconds of workload
# after the kill), vmt_args (extra nbd-http-server flags,
# ':' for spaces), vmt_count (lat).
name="http-nbd-$vmt_mode"
vol=statefile
fail() {
  echo "VMTEST FAIL $name $*"
  for f in /tmp/nbd-http-server*.log /tmp/loop.log /tmp/hb.err /tmp/hb.json; do
    [ -f "$f" ] && { echo "--- $f ---"; cat "$f"; }
  done
  dmesg | grep -i nbd | tail -n 20
  exit 1
}
now() { cut -d' ' -f1 /proc/uptime; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
  t="$1"; shift
  i=0
  while ! "$@"; do
    i=$((i + 1))
    [ $i -le $((t * 10)) ] || return 1
    sleep 0.1
  done
}
extra="$(echo "${vmt_args:-}" | tr ':' ' ')"
run=0
start_server() {
  run=$((run + 1))
  log=/tmp/nbd-http-server-$run.log
  out=/tmp/nbd-http-server-$run.out
  # shellcheck disable=SC2086
  nbd-http-server --socket-path /run/$vol.sock --nbd-name $vol --urls "$vmt_urls" \
    --device-size "${vmt_size:-4194304}" $extra >"$out" 2>"$log" &
  pid=$!
  attached() { grep -q '^NBD `/dev/nbd[0-9]*` is now attached\.$' "$out"; }
  wait_for 20 attached || fail "run $run: no 'is now attached' line within 20 s; stdout: $(cat "$out")"
  dev="$(sed -n 's/^NBD `\(.*\)` is now attached\.$/\1/p' "$out")"
  echo "run $run: pid $pid attached $dev at $(now)"
}
start_loop() {
  rm -f /tmp/stop-loop /tmp/loop-running
  guest-io loop /dev/http-nbd/$vol 1048576 "$1" "${vmt_seed:-5}" >/tmp/loop.log 2>&1 &
  loop_pid=$!
  wait_for 20 test -e /tmp/loop-running || fail "writer loop did not start: $(cat /tmp/loop.log)"
}
stop_loop() {
  touch /tmp/stop-loop
  wait "$loop_pid"
  rc=$?
  cat /tmp/loop.log
  [ $rc -eq 0 ] || fail "the writer saw an error (exit $rc)"
}

start_server
link="$(readlink /dev/http-nbd/$vol)" || fail "no /dev/http-nbd/$vol"
[ "$link" = "$dev" ] || fail "/dev/http-nbd/$vol -> $link, expected $dev"
n="${dev#/dev/nbd}"
lbs="$(cat /sys/block/nbd$n/queue/logical_block_size)"
[ "$lbs" = 512 ] || fail "logical_block_size is $lbs, not 512"
sched="$(cat /sys/block/nbd$n/queue/scheduler)"
echo "$dev: lbs $lbs, $(cat /sys/block/nbd$n/size) sectors, scheduler $sched, backend $(cat /sys/block/nbd$n/backend)"
case "$sched" in *"[none]"*) ;; *) fail "scheduler is $sched, not none" ;; esac

case "$vmt_mode" in
attach)
  seed="${vmt_seed:-1}"
  d=/dev/http-nbd/$vol
  out="$(guest-io lbs $d)" || fail "guest-io lbs: $out"
  [ "$out" = "lbs 512" ] || fail "BLKSSZGET says $out"
  out="$(guest-io write $d 0 266240 "$seed")" || fail "260 KiB write: $out"
  out="$(guest-io verify $d 0 266240 "$seed")" || fail "260 KiB read-back: $out"
  out="$(guest-io write $d 270336 1024 $((seed + 1)))" || fail "1 KiB write: $out"
  out="$(guest-io verify $d 270336 1024 $((seed + 1)))" || fail "1 KiB read-back: $out"
  echo "$out"
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  [ $rc -eq 0 ] || fail "nbd-http-server exited $rc after SIGTERM"
  [ -e /dev/http-nbd/$vol ] && fail "/dev/http-nbd/$vol still exists after SIGTERM"
  [ -e /sys/block/nbd$n/pid ] && fail "$dev still connected after SIGTERM"
  grep -q detached /tmp/nbd-http-server-1.log || fail "no 'detached' log line"
  ;;
restart)
  start_loop 60
  sleep 2
  echo "SIGKILL nbd-http-server (pid $pid) at $(now)"
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null
  sleep 0.5
  old="$dev"
  start_server
  [ "$dev" = "$old" ] || fail "restart attached $dev, not the same device $old"
  grep -q "reconnected" /tmp/nbd-http-server-2.log || fail "the restarted server did not reconnect"
  [ "$(readlink /dev/http-nbd/$vol)" = "$dev" ] || fail "link changed"
  # Long enough for a request caught by the kill to be re-sent after the
  # kernel request timeout.
  sleep "${vmt_after:-10}"
  stop_loop
  kill -TERM "$pid"; wait "$pid"
  ;;
failover)
  start_loop 90
  sleep 2
  echo "asking the host to kill the serving http-disk-server at $(now)"
  reply="$(echo loop-running | timeout 30 nc 10.0.2.2 "$vmt_ctl")"
  echo "host: $reply at $(now)"
  [ "$reply" = killed ] || fail "host control answered '$reply'"
  sleep "${vmt_after:-8}"
  stop_loop
  kill -TERM "$pid"; wait "$pid"
  ;;
heartbeat)
  d=/dev/http-nbd/$vol
  out="$(xha-shim init --hosts 2 $d 2>&1)" || fail "xha-shim init: $out"
  echo "$out"
  after="${vmt_after:-10}"
  # Kill at about 4 s; the run covers the takeover plus $after seconds.
  xha-shim heartbeat --target $d --duration $((after + 14)) --interval-ms 1000 \
    --sf-timeout-ms 20000 --json >/tmp/hb.json 2>/tmp/hb.err &
  hb_pid=$!
  sleep 4
  echo "asking the host to kill the serving http-disk-server at $(now)"
  reply="$(echo heartbeat-running | timeout 30 nc 10.0.2.2 "$vmt_ctl")"
  echo "host: $reply at $(now)"
  [ "$reply" = killed ] || fail "host control answered '$reply'"
  wait "$hb_pid"
  rc=$?
  grep -E '"(index|cycles|successful_cycles|longest_gap_ms|stuck_in_io_ms|verdict|any_hurt)"' /tmp/hb.json \
    | sed 's/^ *//; s/,$//; s/^/heartbeat report: /'
  [ $rc -eq 0 ] || fail "xha-shim heartbeat exited $rc"
  grep -q '"any_hurt": false' /tmp/hb.json || fail "a host would have been hurt"
  kill -TERM "$pid"; wait "$pid"
  ;;
bench)
  count="${vmt_count:-300}"
  nbd-client 10.0.2.2 "$vmt_nbdkit" /dev/nbd3 -b 512 -t 10 || fail "nbd-client to nbdkit exited $?"
  out="$(guest-io lat /dev/nbd3 1048576 "$count")" || fail "lat on nbdkit: $out"
  echo "$out" | sed 's/^/bench nbdkit-file /'
  nbd-client -d /dev/nbd3
  out="$(guest-io lat /dev/http-nbd/$vol 1048576 "$count")" || fail "lat on http-nbd: $out"
  echo "$out" | sed 's/^/bench http-nbd /'
  start_loop 90
  sleep 2
  reply="$(echo loop-running | timeout 30 nc 10.0.2.2 "$vmt_ctl")"
  [ "$reply" = killed ] || fail "host control answered '$reply'"
  sleep "${vmt_after:-6}"
  stop_loop
  sed -n 's/^loop ok: /bench failover-stall /p' /tmp/loop.log
  kill -TERM "$pid"; wait "$pid"
  ;;
*) fail "unknown vmt_mode $vmt_mode" ;;
esac
echo "VMTEST PASS $name"
