#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ (committed; rerun only
to change them).

NBD bytes are assembled here from the protocol document's layouts (not with
the project's encoders, so a shared mistake cannot hide); HTTP requests and
Range headers are typical of nbd-http-server and the reference clients; DRBD
seeds are the fixtures in /work/shared/fixtures/drbd; statefile seeds are
images written by xha-shim's own encoder (`xha-shim init` and `heartbeat`),
passed as arguments:

    make_seeds.py [STATEFILE_IMAGE...]
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
FIXTURES = os.environ.get("DRBD_FIXTURES", "/work/shared/fixtures/drbd")


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- NBD, from doc/proto.md -------------------------------------------------
IHAVEOPT = b"IHAVEOPT"
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 8, 10
INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 1, 2, 3
REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
FLAG_FUA = 1


def option(opt, data=b""):
    return IHAVEOPT + struct.pack(">II", opt, len(data)) + data


def info_data(name, requests=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(requests)) + b"".join(
        struct.pack(">H", r) for r in requests
    )


def request(cmd, offset, length, handle, flags=0):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length)


def nbd_session():
    """A typical transmission phase: what the kernel and xhad do."""
    s = request(CMD_READ, 0, 512, 1)
    s += request(CMD_WRITE, 4096, 1024, 2, FLAG_FUA) + bytes(range(256)) * 4
    s += request(CMD_FLUSH, 0, 0, 3)
    s += request(CMD_READ, 4096 * 64, 512, 4)
    s += request(CMD_DISC, 0, 0, 5)
    return s


def nbd_seeds():
    # nbd_handshake: [variant u8][chunk seed u16][client bytes]
    hs = {
        # nbd-client / qemu: fixed newstyle, no zeroes, GO with block size.
        "go-statefile": struct.pack(">I", 3)
        + option(OPT_GO, info_data(b"statefile", (INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION)))
        + nbd_session(),
        # Old clients: EXPORT_NAME with the default name and the 124 zeroes.
        "export-name-default": struct.pack(">I", 1) + option(OPT_EXPORT_NAME, b"") + nbd_session(),
        # Option haggling before GO.
        "list-info-go": struct.pack(">I", 3)
        + option(OPT_LIST)
        + option(OPT_STRUCTURED_REPLY)
        + option(OPT_STARTTLS)
        + option(OPT_SET_META_CONTEXT, b"\0\0\0\0\0\0\0\0")
        + option(OPT_INFO, info_data(b"", ()))
        + option(OPT_GO, info_data(b"nope", ()))
        + option(OPT_GO, info_data(b"", (INFO_BLOCK_SIZE,))),
        "abort": struct.pack(">I", 1) + option(OPT_LIST, b"x") + option(OPT_ABORT),
        "bad-flags": struct.pack(">I", 4),
    }
    for i, (name, stream) in enumerate(hs.items()):
        write("nbd_handshake", name, bytes([i % 4]) + struct.pack(">H", i * 37) + stream)

    # nbd_transmission: [limits u8][size u64][max_request u32][max_discard u32][chunk seed u16][bytes]
    def prefix(sel, size=4 << 20, max_request=65536, max_discard=1 << 20, seed=0):
        return struct.pack(">BQIIH", sel, size, max_request, max_discard, seed)

    bad = request(CMD_READ, (4 << 20) - 512, 1024, 10)  # past the end
    bad += request(CMD_WRITE, 4 << 20, 512, 11) + b"\xaa" * 512  # past the end, discarded
    bad += request(CMD_TRIM, 0, 512, 12)
    bad += request(CMD_READ, 0, 512, 13, 1 << 2)  # DF flag: unsupported
    bad += request(CMD_READ, 2**64 - 10, 512, 14)  # offset overflow
    bad += request(CMD_WRITE, 0, 1 << 30, 15)  # too large to skip
    write("nbd_transmission", "daemon-session", prefix(0) + nbd_session())
    write("nbd_transmission", "small-limits-session", prefix(1, seed=5) + nbd_session())
    write("nbd_transmission", "refusals", prefix(2, seed=6) + bad)
    write("nbd_transmission", "refusals-bytewise", prefix(1, seed=1) + bad)


# --- HTTP -------------------------------------------------------------------
def http_seeds():
    ranges = [
        "bytes=0-511",
        "bytes=4096-5119",
        "bytes=266240-",
        "bytes=-512",
        "bytes 0-511/4194304",
        "bytes 4096-5119/*",
        "bytes=0-18446744073709551614",
        "bytes 1024-2047/266240",
    ]
    for i, r in enumerate(ranges):
        write("http_range", "range-%d" % i, r.encode())

    def req(method, headers=(), body=b"", path="/"):
        head = "%s %s HTTP/1.1\r\nhost: 127.0.0.1:8076\r\n" % (method, path)
        head += "".join("%s: %s\r\n" % h for h in headers)
        return head.encode() + b"\r\n" + body

    put = req("PUT", [("content-range", "bytes 1024-2047/65836"), ("content-length", "1024")], b"\x5a" * 1024)
    chunked = req(
        "PUT",
        [("content-range", "bytes 512-1535/*"), ("transfer-encoding", "chunked")],
        b"200\r\n" + b"\x11" * 512 + b"\r\n200\r\n" + b"\x22" * 512 + b"\r\n0\r\n\r\n",
    )
    get = req("GET", [("range", "bytes=1024-2047")])
    sessions = {
        "head-get-put": req("HEAD") + get + put + get,
        "chunked-put": chunked + req("GET", [("range", "bytes=512-1535")]),
        "status-metrics": req("GET", path="/v1/status") + req("GET", path="/metrics") + req("POST", path="/v1/status"),
        "refusals": req("GET", [("range", "bytes=70000-70100")])
        + req("GET", [("range", "bytes=0-1,4-5")])
        + req("PUT", [("content-range", "bytes 0-9/12345"), ("content-length", "10")], b"0123456789")
        + req("PUT", [("content-range", "bytes 0-9/*")])
        + req("DELETE")
        + req("GET", path="/nope"),
        "whole-disk": req("GET"),
    }
    for i, (name, data) in enumerate(sessions.items()):
        write("http_disk_service", name, bytes([0]) + struct.pack(">H", i * 53) + data)
    write("http_disk_service", "standby", bytes([1, 0, 0]) + sessions["head-get-put"])
    # Under a pool key: mode bits 1-2 = 1 (compat) and 2 (required).
    auth = "v1 key=k1 ts=1700000000000 nonce=%s sha256=%s mac=%s" % ("0f" * 16, "e3" * 32, "5a" * 32)
    signed = req("GET", [("range", "bytes=0-511"), ("x-heartbeat-auth", auth)])
    signed += req("PUT", [("content-range", "bytes 0-3/*"), ("content-length", "4"), ("x-heartbeat-auth", auth)], b"abcd")
    write("http_disk_service", "compat-signed", bytes([2, 0, 7]) + signed + req("HEAD"))
    write("http_disk_service", "required-unsigned", bytes([4, 0, 9]) + sessions["head-get-put"] + signed)


# --- DRBD -------------------------------------------------------------------
def drbd_seeds():
    for name in sorted(os.listdir(FIXTURES)):
        path = os.path.join(FIXTURES, name)
        if name.startswith("events2-"):
            write("drbd_events2", name, b"\0" + open(path, "rb").read())
        elif name.endswith(".json"):
            write("drbd_events2", name, b"\1" + open(path, "rb").read())


# --- XHA statefile ----------------------------------------------------------
def statefile_seeds(images):
    for i, path in enumerate(images):
        image = open(path, "rb").read()
        config_hosts = struct.unpack_from("<I", image, 96)[0]
        hosts = min(config_hosts, 3)
        head = image[:512] + b"".join(image[4096 * (h + 1) : 4096 * (h + 1) + 1024] for h in range(hosts))
        write("xha_statefile", "image-%d" % i, head)
        write("xha_statefile", "global-%d" % i, image[:512])


if __name__ == "__main__":
    nbd_seeds()
    http_seeds()
    drbd_seeds()
    statefile_seeds(sys.argv[1:])
