//! The NBD transmission phase as a sans-I/O request parser.
//!
//! Bytes from the client go in through [`RequestParser::feed`];
//! [`RequestParser::next_command`] yields complete, validated [`Command`]s.
//! Validation happens here, not in the upstream: a request past the end of
//! the device, too large, with an unknown command or flag becomes
//! [`Command::Reject`] with the error the spec asks for, and the connection
//! keeps serving. Only a lost framing (bad magic) or a write payload too large
//! to skip safely ends the connection ([`ProtocolViolation`]).

use heartbeat_wire::nbd::{self, RequestHeader};

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Export size in bytes.
    pub size: u64,
    /// Largest read or write accepted (the advertised maximum block size).
    pub max_request: u32,
    /// Largest rejected write payload that is still read and thrown away to
    /// keep the connection; anything larger closes it (the spec allows a hard
    /// disconnect for payloads large enough to be a denial of service).
    pub max_discard: u32,
}

/// One validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read {
        handle: u64,
        offset: u64,
        length: u32,
    },
    Write {
        handle: u64,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Flush {
        handle: u64,
    },
    /// `NBD_CMD_DISC`: finish in-flight requests, then close. No reply.
    Disconnect,
    /// Answer with this error and no data.
    Reject {
        handle: u64,
        error: u32,
        reason: String,
    },
}

/// Why the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("request magic {0:#010x} is wrong: the client lost framing")]
    BadMagic(u32),
    #[error("write of {length} bytes is too large to skip (limit {limit}); closing as the NBD spec allows")]
    PayloadTooLarge { length: u32, limit: u32 },
}

#[derive(Debug)]
enum State {
    Header,
    /// Collecting a write payload to pass on.
    Payload {
        header: RequestHeader,
        data: Vec<u8>,
    },
    /// Skipping a rejected write's payload; the reject is returned after.
    Discard {
        remaining: u64,
        reject: Command,
    },
    Disconnected,
}

#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    input: Vec<u8>,
    pos: usize,
    state: State,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            input: Vec::new(),
            pos: 0,
            state: State::Header,
        }
    }

    /// Append bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.input.len() {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    fn available(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// The next complete command, `Ok(None)` when more input is needed.
    pub fn next_command(&mut self) -> Result<Option<Command>, ProtocolViolation> {
        loop {
            match &mut self.state {
                State::Disconnected => return Ok(None),
                State::Header => {
                    if self.available().len() < nbd::REQUEST_HEADER_LEN {
                        return Ok(None);
                    }
                    let raw = &self.input[self.pos..self.pos + nbd::REQUEST_HEADER_LEN];
                    let header = RequestHeader::decode(raw).map_err(|_| {
                        ProtocolViolation::BadMagic(u32::from_be_bytes(
                            raw[0..4].try_into().expect("4"),
                        ))
                    })?;
                    self.pos += nbd::REQUEST_HEADER_LEN;
                    if let Some(cmd) = self.classify(header)? {
                        return Ok(Some(cmd));
                    }
                }
                State::Payload { header, data } => {
                    let want = header.length as usize - data.len();
                    let avail = self.input.len() - self.pos;
                    let n = want.min(avail);
                    data.extend_from_slice(&self.input[self.pos..self.pos + n]);
                    self.pos += n;
                    if n < want {
                        return Ok(None);
                    }
                    let header = *header;
                    let data = std::mem::take(data);
                    self.state = State::Header;
                    return Ok(Some(Command::Write {
                        handle: header.handle,
                        offset: header.offset,
                        data,
                        fua: header.flags & nbd::CMD_FLAG_FUA != 0,
                    }));
                }
                State::Discard { remaining, reject } => {
                    let avail = (self.input.len() - self.pos) as u64;
                    let n = (*remaining).min(avail);
                    self.pos += n as usize;
                    *remaining -= n;
                    if *remaining > 0 {
                        return Ok(None);
                    }
                    let reject = std::mem::replace(reject, Command::Disconnect);
                    self.state = State::Header;
                    return Ok(Some(reject));
                }
            }
        }
    }

    /// Decide what a header means; `None` when a payload must be read first.
    fn classify(&mut self, h: RequestHeader) -> Result<Option<Command>, ProtocolViolation> {
        let reject = |error: u32, reason: String| Command::Reject {
            handle: h.handle,
            error,
            reason,
        };
        let end = h.offset.checked_add(h.length as u64);
        let past_end = end.is_none_or(|e| e > self.limits.size);
        let bad_flags = h.flags & !nbd::CMD_FLAG_FUA;
        let problem = if bad_flags != 0 {
            Some((
                nbd::EINVAL,
                format!("unsupported command flags {bad_flags:#x}"),
            ))
        } else {
            None
        };
        match h.command {
            nbd::CMD_READ => Ok(Some(match problem {
                Some((e, r)) => reject(e, r),
                None if h.length > self.limits.max_request => reject(
                    nbd::EINVAL,
                    format!(
                        "read of {} bytes exceeds the maximum block size {}",
                        h.length, self.limits.max_request
                    ),
                ),
                None if past_end => reject(
                    nbd::EINVAL,
                    format!(
                        "read of {} bytes at {} goes past the end of the {}-byte device",
                        h.length, h.offset, self.limits.size
                    ),
                ),
                None => Command::Read {
                    handle: h.handle,
                    offset: h.offset,
                    length: h.length,
                },
            })),
            nbd::CMD_WRITE => {
                let refusal = match problem {
                    Some(p) => Some(p),
                    None if h.length > self.limits.max_request => Some((
                        nbd::EINVAL,
                        format!(
                            "write of {} bytes exceeds the maximum block size {}",
                            h.length, self.limits.max_request
                        ),
                    )),
                    None if past_end => Some((
                        nbd::ENOSPC,
                        format!(
                            "write of {} bytes at {} goes past the end of the {}-byte device",
                            h.length, h.offset, self.limits.size
                        ),
                    )),
                    None => None,
                };
                match refusal {
                    None => {
                        self.state = State::Payload {
                            header: h,
                            data: Vec::with_capacity(h.length as usize),
                        };
                        Ok(None)
                    }
                    Some(_) if h.length > self.limits.max_discard => {
                        self.state = State::Disconnected;
                        Err(ProtocolViolation::PayloadTooLarge {
                            length: h.length,
                            limit: self.limits.max_discard,
                        })
                    }
                    Some((error, reason)) => {
                        self.state = State::Discard {
                            remaining: h.length as u64,
                            reject: reject(error, reason),
                        };
                        Ok(None)
                    }
                }
            }
            nbd::CMD_FLUSH => Ok(Some(match problem {
                Some((e, r)) => reject(e, r),
                None => Command::Flush { handle: h.handle },
            })),
            nbd::CMD_DISC => {
                self.state = State::Disconnected;
                Ok(Some(Command::Disconnect))
            }
            other => Ok(Some(reject(
                nbd::EINVAL,
                format!("command {other} is not supported (only READ, WRITE, FLUSH, DISC)"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        size: 1 << 20,
        max_request: 64 * 1024,
        max_discard: 256 * 1024,
    };

    fn req(command: u16, flags: u16, handle: u64, offset: u64, length: u32) -> Vec<u8> {
        RequestHeader {
            flags,
            command,
            handle,
            offset,
            length,
        }
        .encode()
        .to_vec()
    }

    fn all(p: &mut RequestParser) -> Vec<Command> {
        let mut v = Vec::new();
        while let Some(c) = p.next_command().unwrap() {
            v.push(c);
        }
        v
    }

    #[test]
    fn read_write_flush_disc() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_READ, 0, 1, 512, 1024);
        bytes.extend(req(nbd::CMD_WRITE, nbd::CMD_FLAG_FUA, 2, 4096, 4));
        bytes.extend([9, 8, 7, 6]);
        bytes.extend(req(nbd::CMD_FLUSH, 0, 3, 0, 0));
        bytes.extend(req(nbd::CMD_DISC, 0, 4, 0, 0));
        bytes.extend(req(nbd::CMD_READ, 0, 5, 0, 1)); // after DISC: ignored
        p.feed(&bytes);
        assert_eq!(
            all(&mut p),
            vec![
                Command::Read {
                    handle: 1,
                    offset: 512,
                    length: 1024
                },
                Command::Write {
                    handle: 2,
                    offset: 4096,
                    data: vec![9, 8, 7, 6],
                    fua: true
                },
                Command::Flush { handle: 3 },
                Command::Disconnect,
            ]
        );
    }

    #[test]
    fn byte_at_a_time_write() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_WRITE, 0, 7, 0, 3);
        bytes.extend([1, 2, 3]);
        let mut got = Vec::new();
        for b in bytes {
            p.feed(&[b]);
            got.extend(all(&mut p));
        }
        assert_eq!(
            got,
            vec![Command::Write {
                handle: 7,
                offset: 0,
                data: vec![1, 2, 3],
                fua: false
            }]
        );
    }

    fn error_of(c: &Command) -> u32 {
        match c {
            Command::Reject { error, .. } => *error,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    #[test]
    fn out_of_range_requests_are_rejected_and_parsing_continues() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_READ, 0, 1, (1 << 20) - 512, 1024);
        bytes.extend(req(nbd::CMD_WRITE, 0, 2, 1 << 20, 512));
        bytes.extend(vec![0xaa; 512]);
        bytes.extend(req(nbd::CMD_READ, 0, 3, u64::MAX - 10, 512)); // overflow
        bytes.extend(req(nbd::CMD_READ, 0, 4, 0, 512));
        p.feed(&bytes);
        let got = all(&mut p);
        assert_eq!(got.len(), 4);
        assert_eq!(error_of(&got[0]), nbd::EINVAL);
        assert_eq!(error_of(&got[1]), nbd::ENOSPC);
        assert_eq!(error_of(&got[2]), nbd::EINVAL);
        assert!(matches!(got[3], Command::Read { handle: 4, .. }));
    }

    #[test]
    fn oversized_requests() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_READ, 0, 1, 0, 128 * 1024);
        bytes.extend(req(nbd::CMD_WRITE, 0, 2, 0, 128 * 1024));
        bytes.extend(vec![0; 128 * 1024]);
        bytes.extend(req(nbd::CMD_FLUSH, 0, 3, 0, 0));
        p.feed(&bytes);
        let got = all(&mut p);
        assert_eq!(error_of(&got[0]), nbd::EINVAL);
        assert_eq!(error_of(&got[1]), nbd::EINVAL);
        assert_eq!(got[2], Command::Flush { handle: 3 });

        // Too large to skip: the connection goes.
        let mut p = RequestParser::new(LIMITS);
        p.feed(&req(nbd::CMD_WRITE, 0, 9, 0, 1 << 30));
        assert_eq!(
            p.next_command(),
            Err(ProtocolViolation::PayloadTooLarge {
                length: 1 << 30,
                limit: 256 * 1024
            })
        );
    }

    #[test]
    fn unknown_commands_and_flags_get_einval() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_TRIM, 0, 1, 0, 512);
        bytes.extend(req(nbd::CMD_WRITE_ZEROES, 0, 2, 0, 512));
        bytes.extend(req(nbd::CMD_BLOCK_STATUS, 0, 3, 0, 512));
        bytes.extend(req(99, 0, 4, 0, 0));
        bytes.extend(req(nbd::CMD_READ, nbd::CMD_FLAG_DF, 5, 0, 512));
        bytes.extend(req(nbd::CMD_WRITE, 1 << 7, 6, 0, 2));
        bytes.extend([1, 2]);
        bytes.extend(req(nbd::CMD_FLUSH, nbd::CMD_FLAG_FUA, 7, 0, 0)); // FUA accepted anywhere
        bytes.extend(req(nbd::CMD_READ, nbd::CMD_FLAG_FUA, 8, 0, 512));
        p.feed(&bytes);
        let got = all(&mut p);
        assert_eq!(got.len(), 8);
        for c in &got[..6] {
            assert_eq!(error_of(c), nbd::EINVAL);
        }
        assert_eq!(got[6], Command::Flush { handle: 7 });
        assert!(matches!(got[7], Command::Read { handle: 8, .. }));
    }

    #[test]
    fn bad_magic_is_a_violation() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_READ, 0, 1, 0, 512);
        bytes[0] = 0;
        p.feed(&bytes);
        assert!(matches!(
            p.next_command(),
            Err(ProtocolViolation::BadMagic(_))
        ));
    }

    #[test]
    fn zero_length_requests_pass() {
        let mut p = RequestParser::new(LIMITS);
        let mut bytes = req(nbd::CMD_READ, 0, 1, 1 << 20, 0);
        bytes.extend(req(nbd::CMD_WRITE, 0, 2, 0, 0));
        p.feed(&bytes);
        let got = all(&mut p);
        assert!(matches!(got[0], Command::Read { length: 0, .. }));
        assert!(matches!(got[1], Command::Write { ref data, .. } if data.is_empty()));
    }
}
