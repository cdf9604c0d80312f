# Scenario: `xha-shim attach` / `detach` in the guest, as XCP-ng's storage
# driver would run them, with the kernel device: nbd-http-server (started by
# xha-shim) attaches /dev/nbdN itself on an http-disk-server on the host
# (10.0.2.2); xhad-style I/O through the printed path; a second attach keeps
# the daemon; after a SIGKILL of nbd-http-server, attach restarts it onto the
# same device; detach disconnects the device and removes the link; a second
# detach succeeds.
# Parameters: vmt_urls (comma separated), vmt_size, vmt_seed.
name=xha-attach
vol=statefile
run=/run/xha-heartbeat
seed="${vmt_seed:-1}"
fail() {
  echo "VMTEST FAIL $name $*"
  for f in /tmp/attach*.err $run/*.log $run/*.out; do
    [ -f "$f" ] && { echo "--- $f ---"; cat "$f"; }
  done
  dmesg | grep -i nbd | tail -n 20
  exit 1
}
attach() {
  xha-shim attach --volume $vol --urls "$vmt_urls" --device-size "${vmt_size:-4194304}" \
    >/tmp/attach$1.out 2>/tmp/attach$1.err || fail "attach $1 exited $?: $(cat /tmp/attach$1.err)"
  path="$(cat /tmp/attach$1.out)"
  [ "$path" = /dev/http-nbd/$vol ] || fail "attach $1 printed '$path'"
  dev="$(readlink /dev/http-nbd/$vol)" || fail "attach $1: /dev/http-nbd/$vol is not a link"
  [ -b "$dev" ] || fail "attach $1: $dev is not a block device"
  pid="$(cat $run/nbd-http-server-$vol.pid)" || fail "attach $1: no pid file"
  echo "attach $1: $path -> $dev, nbd-http-server pid $pid"
}

attach 1
dev1="$dev"; pid1="$pid"
n="${dev#/dev/nbd}"
[ -e /sys/block/nbd$n/pid ] || fail "$dev is not connected"
d=/dev/http-nbd/$vol
out="$(guest-io write $d 0 266240 "$seed")" || fail "260 KiB write: $out"
out="$(guest-io verify $d 0 266240 "$seed")" || fail "260 KiB read-back: $out"

attach 2
[ "$dev" = "$dev1" ] || fail "second attach: $dev, not $dev1"
[ "$pid" = "$pid1" ] || fail "second attach started another nbd-http-server ($pid, was $pid1)"
grep -q "already running" /tmp/attach2.err || fail "second attach did not keep the daemon"

kill -KILL "$pid1"
sleep 0.5
attach 3
[ "$pid" != "$pid1" ] || fail "attach after SIGKILL did not start a new nbd-http-server"
[ "$dev" = "$dev1" ] || fail "attach after SIGKILL gave $dev, not the same device $dev1"
out="$(guest-io verify $d 0 266240 "$seed")" || fail "read-back after the restart: $out"
out="$(guest-io write $d 270336 1024 $((seed + 1)))" || fail "1 KiB write after the restart: $out"
out="$(guest-io verify $d 270336 1024 $((seed + 1)))" || fail "1 KiB read-back: $out"

xha-shim detach --volume $vol >/tmp/detach1.out 2>/tmp/detach1.err || fail "detach exited $?: $(cat /tmp/detach1.err)"
cat /tmp/detach1.err
[ -e /dev/http-nbd/$vol ] && fail "/dev/http-nbd/$vol still exists after detach"
[ -e $run/nbd-http-server-$vol.pid ] && fail "pid file left after detach"
i=0
while [ -e /sys/block/nbd$n/pid ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -e /sys/block/nbd$n/pid ] && fail "$dev still connected after detach"
xha-shim detach --volume $vol 2>/tmp/detach2.err || fail "second detach exited $?: $(cat /tmp/detach2.err)"
grep -q "nothing to detach" /tmp/detach2.err || fail "second detach: $(cat /tmp/detach2.err)"
echo "VMTEST PASS $name"
