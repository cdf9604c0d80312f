# Scenario: the guest kernel's NBD client (Debian's nbd-client) on an NBD
# server on the host, then statefile-style I/O through /dev/nbd0.
# Parameters: vmt_port (required), vmt_export (export name, default none),
# vmt_seed (pattern seed, default 1).
name=kernel-nbd
fail() { echo "VMTEST FAIL $name $*"; exit 1; }
[ -n "$vmt_port" ] || fail "no vmt_port parameter"
seed="${vmt_seed:-1}"
dev=/dev/nbd0

set -- 10.0.2.2 "$vmt_port" "$dev" -b 512 -t 10
[ -n "$vmt_export" ] && set -- "$@" -N "$vmt_export"
nbd-client "$@" || fail "nbd-client $* exited $?"

lbs="$(cat /sys/block/nbd0/queue/logical_block_size)"
[ "$lbs" = 512 ] || fail "logical_block_size is $lbs, not 512"
out="$(guest-io lbs $dev)" || fail "guest-io lbs: $out"
[ "$out" = "lbs 512" ] || fail "BLKSSZGET says $out"
size="$(cat /sys/block/nbd0/size)"
echo "nbd0: logical block size $lbs, $size sectors"

# The pool-initialisation write (260 KiB at 0), then a host section's 1 KiB
# write, each read back in 512-byte O_DIRECT reads as xhad does.
out="$(guest-io write $dev 0 266240 "$seed")" || fail "260 KiB write: $out"
out="$(guest-io verify $dev 0 266240 "$seed")" || fail "260 KiB read-back: $out"
out="$(guest-io write $dev 270336 1024 $((seed + 1)))" || fail "1 KiB write: $out"
out="$(guest-io verify $dev 270336 1024 $((seed + 1)))" || fail "1 KiB read-back: $out"
echo "$out"

nbd-client -d $dev || fail "nbd-client -d exited $?"
echo "VMTEST PASS $name"
