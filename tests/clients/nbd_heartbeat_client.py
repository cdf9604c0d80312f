#!/usr/bin/python3
"""A heartbeat-like NBD client built on libnbd (a client nobody here wrote).

Like one xhad host: writes its own 1 KiB section (with FUA, as O_SYNC would),
reads it back, and verifies it, every --interval-ms, until --stop-file appears
or --duration-s passes. Every acknowledged write is remembered; every read must
return the last acknowledged write of this client (no lost write, no stale or
torn data). Per-request start times use CLOCK_MONOTONIC so the harness can
line them up with the moments it killed a server.

Prints one JSON document on stdout at the end.
Must run under /usr/bin/python3 (Debian's python3-libnbd).
"""
import argparse
import json
import os
import sys
import time

import nbd


def pattern(client_id, seq, length):
    head = f"client={client_id} seq={seq:012d} ".encode()
    body = (head * (length // len(head) + 1))[:length]
    return bytearray(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--client-id", type=int, default=0)
    ap.add_argument("--offset", type=int, required=True)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--interval-ms", type=int, default=100)
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--stop-file", default=None)
    ap.add_argument("--ready-file", default=None)
    args = ap.parse_args()

    h = nbd.NBD()
    h.connect_uri(args.uri)
    if args.ready_file:
        open(args.ready_file, "w").close()

    requests = []  # [start_monotonic, latency_s, op, ok]
    errors = []
    mismatches = []
    last_acked = None
    seq = 0
    end = time.monotonic() + args.duration_s
    next_at = time.monotonic()
    while time.monotonic() < end:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += args.interval_ms / 1000.0
        seq += 1
        data = pattern(args.client_id, seq, args.length)
        t0 = time.monotonic()
        try:
            h.pwrite(data, args.offset, nbd.CMD_FLAG_FUA)
            requests.append([t0, time.monotonic() - t0, "write", True])
            last_acked = (seq, bytes(data))
        except nbd.Error as e:
            requests.append([t0, time.monotonic() - t0, "write", False])
            errors.append({"op": "write", "seq": seq, "at": t0, "error": str(e)})
        t0 = time.monotonic()
        try:
            got = h.pread(args.length, args.offset)
            requests.append([t0, time.monotonic() - t0, "read", True])
            if last_acked is not None and bytes(got) != last_acked[1]:
                mismatches.append({"seq": seq, "expected_seq": last_acked[0],
                                   "got_head": bytes(got[:40]).decode(errors="replace")})
        except nbd.Error as e:
            requests.append([t0, time.monotonic() - t0, "read", False])
            errors.append({"op": "read", "seq": seq, "at": t0, "error": str(e)})

    # Final verification: the device holds the last acknowledged write.
    final_ok = None
    if last_acked is not None:
        try:
            final_ok = bytes(h.pread(args.length, args.offset)) == last_acked[1]
        except nbd.Error as e:
            errors.append({"op": "final-read", "seq": seq, "error": str(e)})
            final_ok = False
    try:
        h.shutdown()
    except nbd.Error:
        pass
    json.dump({
        "client_id": args.client_id,
        "writes_acked": sum(1 for r in requests if r[2] == "write" and r[3]),
        "requests": requests,
        "errors": errors,
        "mismatches": mismatches,
        "last_acked_seq": last_acked[0] if last_acked else None,
        "final_ok": final_ok,
    }, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
