//! The fixed newstyle NBD handshake (`nbd_http_server::handshake`), fed
//! arbitrary client bytes in arbitrary chunkings.
//!
//! Input: `[export variant: u8][chunking seed: u16][client bytes...]`.
//!
//! Invariants:
//! - no panic;
//! - the outcome (server bytes, end of the handshake, bytes left over for the
//!   transmission phase) does not depend on how the client bytes are split;
//! - the server's bytes are a well-formed reply stream, checked against a
//!   reading of the client's options written from the protocol document: the
//!   greeting, then for each option zero or more informational replies and
//!   exactly one final reply (ACK or error) with the option echoed,
//!   `NBD_REP_INFO` data that decodes and describes the configured export,
//!   error messages that are UTF-8 and at most 4096 bytes, and the
//!   `NBD_OPT_EXPORT_NAME` reply with or without the 124 zeroes as negotiated;
//! - option data is never buffered beyond `MAX_OPTION_DATA`, and memory grows
//!   at most linearly in the bytes received (no allocation sized by a length
//!   field before the bytes are there);
//! - after the handshake, the leftover bytes go through the transmission
//!   parser with the daemon's limits, as `server.rs` does.

#![no_main]

use heartbeat_fuzz::{chunk_sizes, AllocMeter, Input};
use heartbeat_wire::nbd::{self, InfoReply};
use libfuzzer_sys::fuzz_target;
use nbd_http_server::handshake::{
    BlockSize, CloseReason, ExportInfo, Handshake, Progress, MAX_OPTION_DATA,
};
use nbd_http_server::transmission::{Command, Limits, RequestParser};

const SIZE: u64 = 4 << 20;
const FLAGS: u16 = nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH | nbd::FLAG_SEND_FUA;
/// The daemon's advertised maximum (`nbd_http_server::daemon::MAX_REQUEST`).
const MAX_REQUEST: u32 = 32 * 1024 * 1024;

fn export(variant: u8) -> ExportInfo {
    ExportInfo {
        name: if variant & 1 == 0 { "statefile" } else { "" }.into(),
        description: if variant & 2 == 0 { "HA statefile" } else { "" }.into(),
        size: SIZE,
        transmission_flags: FLAGS,
        block_size: BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: MAX_REQUEST,
        },
    }
}

/// How a handshake run ended, with everything the client would observe.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    output: Vec<u8>,
    /// `None`: still waiting for input when the bytes ran out.
    end: Option<Progress>,
}

fn run(export: &ExportInfo, stream: &[u8], chunks: &[usize]) -> Outcome {
    let mut hs = Handshake::new(export.clone());
    let mut output = hs.take_output();
    let mut fed = 0usize;
    for &n in chunks {
        let chunk = &stream[fed..fed + n];
        fed += n;
        let meter = AllocMeter::start();
        let progress = hs.receive(chunk);
        // The option data limit, plus linear slack for buffering and replies.
        let bound = MAX_OPTION_DATA as usize + 64 * 1024 + 16 * fed;
        assert!(
            meter.peak_growth() <= bound,
            "handshake allocated {} bytes after receiving {fed}",
            meter.peak_growth()
        );
        output.extend(hs.take_output());
        match progress {
            Progress::NeedInput => {}
            Progress::Transmission { mut leftover } => {
                // What the client sent after the handshake: the rest of this
                // read plus everything it sends later.
                leftover.extend_from_slice(&stream[fed..]);
                return Outcome {
                    output,
                    end: Some(Progress::Transmission { leftover }),
                };
            }
            close @ Progress::Close(_) => {
                return Outcome {
                    output,
                    end: Some(close),
                }
            }
        }
    }
    Outcome { output, end: None }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Reads the server's byte stream.
struct Replies<'a> {
    out: &'a [u8],
}

impl<'a> Replies<'a> {
    fn take(&mut self, n: usize, what: &str) -> &'a [u8] {
        assert!(
            self.out.len() >= n,
            "server output ends inside {what}: {} bytes left, {n} needed",
            self.out.len()
        );
        let (head, tail) = self.out.split_at(n);
        self.out = tail;
        head
    }

    /// One option reply: (reply type, data), checking the common frame.
    fn reply(&mut self, option: u32) -> (u32, &'a [u8]) {
        let h = self.take(nbd::OPTION_REPLY_HEADER_LEN, "an option reply header");
        assert_eq!(be64(h), nbd::OPTION_REPLY_MAGIC, "option reply magic");
        assert_eq!(be32(&h[8..]), option, "reply does not echo the option");
        let reply_type = be32(&h[12..]);
        let len = be32(&h[16..]) as usize;
        let data = self.take(len, "option reply data");
        if reply_type & nbd::REP_FLAG_ERROR != 0 {
            assert!(
                std::str::from_utf8(data).is_ok(),
                "error message of {reply_type:#x} is not UTF-8"
            );
            assert!(
                data.len() <= nbd::MAX_STRING_LEN,
                "error message of {reply_type:#x} to option {option} is {} bytes, more than the protocol's {}-byte string limit",
                data.len(),
                nbd::MAX_STRING_LEN
            );
        }
        (reply_type, data)
    }

    /// Informational replies up to and including the final one; returns the
    /// informational data and the final reply type.
    fn until_final(&mut self, option: u32, informational: u32) -> (Vec<&'a [u8]>, u32) {
        let mut info = Vec::new();
        loop {
            let (t, data) = self.reply(option);
            if t == nbd::REP_ACK || t & nbd::REP_FLAG_ERROR != 0 {
                if t == nbd::REP_ACK {
                    assert!(data.is_empty(), "ACK with data");
                }
                return (info, t);
            }
            assert_eq!(t, informational, "unexpected reply type to option {option}");
            info.push(data);
        }
    }
}

/// The option data of `NBD_OPT_INFO`/`GO`, read as the protocol defines it:
/// `None` when its lengths do not add up. Returns the requested name.
fn info_request_name(data: &[u8]) -> Option<&[u8]> {
    if data.len() < 6 {
        return None;
    }
    let name_len = be32(data) as usize;
    if name_len > data.len() - 6 {
        return None;
    }
    let name = &data[4..4 + name_len];
    let count = be16(&data[4 + name_len..]) as usize;
    (data.len() - 6 - name_len == 2 * count).then_some(name)
}

fn check_info_replies(export: &ExportInfo, info: &[&[u8]]) {
    let mut saw_export = false;
    for data in info {
        match InfoReply::decode(data).expect("NBD_REP_INFO data must decode") {
            InfoReply::Export {
                size,
                transmission_flags,
            } => {
                assert_eq!((size, transmission_flags), (export.size, export.transmission_flags));
                saw_export = true;
            }
            InfoReply::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                // Constraints the protocol puts on NBD_INFO_BLOCK_SIZE.
                assert!(minimum.is_power_of_two() && minimum <= 65536);
                assert!(preferred.is_power_of_two() && preferred >= 512.max(minimum));
                assert!(maximum == u32::MAX || maximum % minimum == 0);
                assert!(maximum >= minimum);
            }
            InfoReply::Name(n) => assert_eq!(n, export.name),
            InfoReply::Description(d) => assert_eq!(d, export.description),
            InfoReply::Unknown { info_type, .. } => panic!("server sent unknown info {info_type}"),
        }
    }
    assert!(saw_export, "NBD_OPT_INFO/GO succeeded without NBD_INFO_EXPORT");
}

/// Walks the client's bytes as the protocol defines them and checks the
/// server's output and ending against them.
fn check_against_protocol(export: &ExportInfo, stream: &[u8], got: &Outcome) {
    let mut out = Replies { out: &got.output };
    let greeting = out.take(nbd::SERVER_GREETING_LEN, "the greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    assert_eq!(&greeting[8..16], b"IHAVEOPT");
    assert_eq!(be16(&greeting[16..]), nbd::FLAG_FIXED_NEWSTYLE | nbd::FLAG_NO_ZEROES);

    let answers_to = |name: &[u8]| name.is_empty() || name == export.name.as_bytes();
    let expect_end = |out: &Replies, end: Option<Progress>| {
        assert!(out.out.is_empty(), "server sent {} unexplained bytes", out.out.len());
        assert_eq!(got.end, end, "handshake ended differently than the protocol says");
    };

    if stream.len() < 4 {
        return expect_end(&out, None);
    }
    let flags = be32(stream);
    if flags & !(nbd::FLAG_C_FIXED_NEWSTYLE | nbd::FLAG_C_NO_ZEROES) != 0 {
        return expect_end(&out, Some(Progress::Close(CloseReason::UnknownClientFlags(flags))));
    }
    let no_zeroes = flags & nbd::FLAG_C_NO_ZEROES != 0;
    let mut pos = 4;
    loop {
        let Some(h) = stream.get(pos..pos + 16) else {
            return expect_end(&out, None);
        };
        if &h[..8] != b"IHAVEOPT" {
            return expect_end(&out, Some(Progress::Close(CloseReason::BadOptionMagic(be64(h)))));
        }
        let option = be32(&h[8..]);
        let length = be32(&h[12..]);
        if length > MAX_OPTION_DATA {
            return expect_end(
                &out,
                Some(Progress::Close(CloseReason::OptionTooLarge { option, length })),
            );
        }
        let Some(data) = stream.get(pos + 16..pos + 16 + length as usize) else {
            return expect_end(&out, None);
        };
        pos += 16 + length as usize;
        let leftover = || Some(Progress::Transmission { leftover: stream[pos..].to_vec() });
        match option {
            nbd::OPT_EXPORT_NAME => {
                if !answers_to(data) {
                    let name = String::from_utf8_lossy(data).into_owned();
                    return expect_end(&out, Some(Progress::Close(CloseReason::UnknownExport(name))));
                }
                let r = out.take(10, "the NBD_OPT_EXPORT_NAME reply");
                assert_eq!((be64(r), be16(&r[8..])), (export.size, export.transmission_flags));
                if !no_zeroes {
                    let z = out.take(nbd::EXPORT_NAME_ZEROES, "the reserved zeroes");
                    assert!(z.iter().all(|&b| b == 0));
                }
                return expect_end(&out, leftover());
            }
            nbd::OPT_ABORT => {
                let (info, fin) = out.until_final(option, 0);
                assert!(info.is_empty());
                assert_eq!(fin, nbd::REP_ACK);
                return expect_end(&out, Some(Progress::Close(CloseReason::ClientAborted)));
            }
            nbd::OPT_LIST => {
                let (info, fin) = out.until_final(option, nbd::REP_SERVER);
                if !data.is_empty() {
                    assert!(info.is_empty());
                    assert_eq!(fin, nbd::REP_ERR_INVALID);
                    continue;
                }
                assert_eq!(fin, nbd::REP_ACK);
                assert_eq!(info.len(), 1);
                let entry = info[0];
                assert_eq!(be32(entry) as usize, entry.len() - 4);
                assert_eq!(&entry[4..], export.name.as_bytes());
            }
            nbd::OPT_INFO | nbd::OPT_GO => {
                let (info, fin) = out.until_final(option, nbd::REP_INFO);
                match info_request_name(data) {
                    None => {
                        assert!(info.is_empty());
                        assert_eq!(fin, nbd::REP_ERR_INVALID);
                    }
                    Some(name) if !answers_to(name) => {
                        assert!(info.is_empty());
                        assert_eq!(fin, nbd::REP_ERR_UNKNOWN);
                    }
                    Some(_) => {
                        assert_eq!(fin, nbd::REP_ACK);
                        check_info_replies(export, &info);
                        if option == nbd::OPT_GO {
                            return expect_end(&out, leftover());
                        }
                    }
                }
            }
            _ => {
                let (info, fin) = out.until_final(option, 0);
                assert!(info.is_empty());
                assert!(fin & nbd::REP_FLAG_ERROR != 0, "option {option} acknowledged");
                if option > nbd::OPT_SET_META_CONTEXT {
                    assert_eq!(fin, nbd::REP_ERR_UNSUP, "unknown option {option}");
                }
            }
        }
    }
}

/// Hands the leftover to the transmission parser as the server does.
fn transmission(leftover: &[u8]) {
    let limits = Limits {
        size: SIZE,
        max_request: MAX_REQUEST,
        max_discard: heartbeat_wire::DEFAULT_MAX_REQUEST_BYTES as u32,
    };
    let mut parser = RequestParser::new(limits);
    parser.feed(leftover);
    while let Ok(Some(c)) = parser.next_command() {
        match c {
            Command::Read { offset, length, .. } => {
                assert!(length <= MAX_REQUEST && offset + length as u64 <= SIZE)
            }
            Command::Write { offset, data, .. } => {
                assert!(data.len() <= MAX_REQUEST as usize && offset + data.len() as u64 <= SIZE)
            }
            Command::Disconnect => break,
            Command::Flush { .. } | Command::Reject { .. } => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let variant = input.u8();
    let seed = input.u16();
    let stream = input.rest();
    let export = export(variant);

    let whole = run(&export, stream, &chunk_sizes(0, stream.len()));
    let chunked = run(&export, stream, &chunk_sizes(seed, stream.len()));
    assert_eq!(whole, chunked, "outcome depends on how the bytes were split");
    check_against_protocol(&export, stream, &whole);
    if let Some(Progress::Transmission { leftover }) = &whole.end {
        transmission(leftover);
    }
});
