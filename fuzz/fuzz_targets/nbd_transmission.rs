//! The NBD transmission request parser (`nbd_http_server::transmission`),
//! fed arbitrary client bytes in arbitrary chunkings under arbitrary limits.
//!
//! Input: `[limits selector: u8][size: u64][max_request: u32]
//! [max_discard: u32][chunking seed: u16][client bytes...]`.
//!
//! Invariants:
//! - no panic;
//! - the commands (and the protocol violation that ends them) do not depend
//!   on how the bytes are split;
//! - they match a reading of the request stream written from the protocol
//!   document: 28-byte headers, a payload only after `NBD_CMD_WRITE`, every
//!   refused request answered with its own handle, nothing after
//!   `NBD_CMD_DISC` or a lost framing;
//! - a read or write handed on never exceeds the configured maximum request
//!   nor the end of the export: the server never asks the upstream for more
//!   than the configured limit;
//! - memory held by the parser is bounded by the configured maximum request
//!   plus a constant times the bytes received.

#![no_main]

use heartbeat_fuzz::{chunk_sizes, AllocMeter, Input};
use heartbeat_wire::nbd;
use libfuzzer_sys::fuzz_target;
use nbd_http_server::transmission::{Command, Limits, ProtocolViolation, RequestParser};

fn limits(input: &mut Input) -> Limits {
    let selector = input.u8();
    let size = input.u64();
    let max_request = input.u32();
    let max_discard = input.u32();
    match selector % 4 {
        // What the daemon runs with.
        0 => Limits {
            size: 4 << 20,
            max_request: 32 << 20,
            max_discard: heartbeat_wire::DEFAULT_MAX_REQUEST_BYTES as u32,
        },
        // The unit tests' small limits.
        1 => Limits {
            size: 1 << 20,
            max_request: 64 * 1024,
            max_discard: 256 * 1024,
        },
        // Anything, with allocations kept cheap.
        _ => Limits {
            size: if selector & 4 == 0 { size } else { size % (8 << 20) },
            max_request: max_request % (1 << 20),
            max_discard: max_discard % (2 << 20),
        },
    }
}

/// What a command amounts to, without the free-text reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Read { handle: u64, offset: u64, length: u32 },
    Write { handle: u64, offset: u64, data: Vec<u8>, fua: bool },
    Flush { handle: u64 },
    Disconnect,
    Reject { handle: u64, error: u32 },
    Violation(ProtocolViolation),
}

fn seen(c: Command) -> Seen {
    match c {
        Command::Read { handle, offset, length } => Seen::Read { handle, offset, length },
        Command::Write { handle, offset, data, fua } => Seen::Write { handle, offset, data, fua },
        Command::Flush { handle } => Seen::Flush { handle },
        Command::Disconnect => Seen::Disconnect,
        Command::Reject { handle, error, .. } => Seen::Reject { handle, error },
    }
}

fn run(limits: Limits, stream: &[u8], chunks: &[usize]) -> Vec<Seen> {
    let mut parser = RequestParser::new(limits);
    let mut out = Vec::new();
    let mut fed = 0usize;
    let bound = limits.max_request as usize + 256 * 1024;
    for &n in chunks {
        let meter = AllocMeter::start();
        let mut batch = Vec::new();
        parser.feed(&stream[fed..fed + n]);
        fed += n;
        let mut violated = false;
        loop {
            match parser.next_command() {
                Ok(Some(c)) => {
                    let c = seen(c);
                    check_command(&limits, &c);
                    batch.push(c);
                }
                Ok(None) => break,
                Err(v) => {
                    batch.push(Seen::Violation(v));
                    violated = true;
                    break;
                }
            }
        }
        // Commands handed out belong to the caller; what is left is what the
        // parser buffered or allocated on the way.
        let handed_out: usize = batch
            .iter()
            .map(|c| match c {
                Seen::Write { data, .. } => data.capacity(),
                _ => 0,
            })
            .sum::<usize>()
            + 3 * batch.capacity() * std::mem::size_of::<Seen>();
        assert!(
            meter.peak_growth() <= bound + 4 * fed + handed_out,
            "parser peaked at {} bytes above its start after {fed} bytes (max request {})",
            meter.peak_growth(),
            limits.max_request
        );
        out.extend(batch);
        if violated || out.last() == Some(&Seen::Disconnect) {
            break;
        }
    }
    out
}

fn check_command(limits: &Limits, c: &Seen) {
    let fits = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= limits.size);
    match c {
        Seen::Read { offset, length, .. } => {
            assert!(*length <= limits.max_request, "read above the maximum request");
            assert!(fits(*offset, *length as u64), "read past the end");
        }
        Seen::Write { offset, data, .. } => {
            assert!(data.len() <= limits.max_request as usize, "write above the maximum request");
            assert!(fits(*offset, data.len() as u64), "write past the end");
        }
        Seen::Reject { error, .. } => {
            assert!(matches!(*error, nbd::EINVAL | nbd::ENOSPC), "error {error}")
        }
        _ => {}
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The request stream read as the protocol document defines it.
fn expected(limits: &Limits, stream: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(h) = stream.get(pos..pos + 28) {
        let magic = u32::from_be_bytes(h[0..4].try_into().unwrap());
        if magic != 0x2560_9513 {
            out.push(Seen::Violation(ProtocolViolation::BadMagic(magic)));
            return out;
        }
        let flags = be16(&h[4..]);
        let command = be16(&h[6..]);
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let offset = u64::from_be_bytes(h[16..24].try_into().unwrap());
        let length = u32::from_be_bytes(h[24..28].try_into().unwrap());
        pos += 28;
        let past_end = offset.checked_add(length as u64).is_none_or(|e| e > limits.size);
        // Only FUA is supported, on any command.
        let bad_flags = flags & !1 != 0;
        let too_big = length > limits.max_request;
        let reject = |error| Seen::Reject { handle, error };
        match command {
            0 => out.push(if bad_flags || too_big || past_end {
                reject(nbd::EINVAL)
            } else {
                Seen::Read { handle, offset, length }
            }),
            1 => {
                let refusal = if bad_flags || too_big {
                    Some(nbd::EINVAL)
                } else if past_end {
                    Some(nbd::ENOSPC)
                } else {
                    None
                };
                if refusal.is_some() && length > limits.max_discard {
                    out.push(Seen::Violation(ProtocolViolation::PayloadTooLarge {
                        length,
                        limit: limits.max_discard,
                    }));
                    return out;
                }
                let Some(payload) = stream.get(pos..pos + length as usize) else {
                    return out; // waiting for the rest of the payload
                };
                pos += length as usize;
                out.push(match refusal {
                    Some(error) => reject(error),
                    None => Seen::Write {
                        handle,
                        offset,
                        data: payload.to_vec(),
                        fua: flags & 1 != 0,
                    },
                });
            }
            2 => {
                out.push(Seen::Disconnect);
                return out;
            }
            3 => out.push(if bad_flags { reject(nbd::EINVAL) } else { Seen::Flush { handle } }),
            _ => out.push(reject(nbd::EINVAL)),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limits = limits(&mut input);
    let seed = input.u16();
    let stream = input.rest();

    let whole = run(limits, stream, &chunk_sizes(0, stream.len()));
    let chunked = run(limits, stream, &chunk_sizes(seed, stream.len()));
    assert_eq!(whole, chunked, "commands depend on how the bytes were split");
    assert_eq!(whole, expected(&limits, stream), "commands differ from the protocol");
});
