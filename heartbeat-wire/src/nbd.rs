//! The NBD wire format (fixed newstyle handshake, simple replies), sans-I/O.
//!
//! Everything here is plain data: constants from the protocol document
//! (`doc/proto.md` in the NetworkBlockDevice/nbd repository) and fixed-layout
//! encoders and decoders for the messages both ends exchange. Sockets, buffers
//! and state machines live in the users (`nbd-http-server`'s server, the small
//! client in `xha-shim`). All integers are big-endian on the wire.
//!
//! A client is built on it like this:
//!
//! 1. read [`SERVER_GREETING_LEN`] bytes, [`decode_server_greeting`] gives the
//!    handshake flags (require [`FLAG_FIXED_NEWSTYLE`]);
//! 2. send [`encode_client_flags`] (`FLAG_C_FIXED_NEWSTYLE`, plus
//!    `FLAG_C_NO_ZEROES` if the server offered `FLAG_NO_ZEROES`);
//! 3. send an [`OptionRequest`] with [`OPT_GO`] whose data is
//!    [`InfoRequest::encode`]; read [`OptionReplyHeader`]s (each followed by
//!    `length` bytes of data) until an `REP_ACK` (success) or an error reply
//!    (`reply_type & REP_FLAG_ERROR != 0`). `REP_INFO` data decodes with
//!    [`InfoReply::decode`]; [`InfoReply::Export`] carries size and
//!    transmission flags;
//! 4. in transmission, send [`RequestHeader`]s (28 bytes, followed by the
//!    payload for `CMD_WRITE`) and read [`SimpleReplyHeader`]s (16 bytes,
//!    followed by `length` bytes of data for a successful `CMD_READ`).

use std::fmt;

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second magic of the newstyle greeting, and the magic in front
/// of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic in front of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic in front of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic in front of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic in front of every structured reply chunk (never sent by our server).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server, 16 bits).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// Client flags (32 bits).
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this protocol revision defines; a server must drop a
/// client that sets any other bit.
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// Transmission flags (16 bits).
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks every error reply.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// Information types in `NBD_REP_INFO` replies and `NBD_OPT_INFO`/`GO` requests.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Error values in simple replies (errno-like, but fixed by the protocol).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// Length of the server's newstyle greeting: two magics and the handshake flags.
pub const SERVER_GREETING_LEN: usize = 18;
/// Length of the client flags field.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Length of an option request header (magic, option, data length).
pub const OPTION_REQUEST_HEADER_LEN: usize = 16;
/// Length of an option reply header (magic, option, reply type, data length).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// The reserved zeroes after an `NBD_OPT_EXPORT_NAME` reply (unless the client
/// negotiated `NBD_FLAG_C_NO_ZEROES`).
pub const EXPORT_NAME_ZEROES: usize = 124;
/// Length of a transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Strings (export names, messages) MUST NOT be longer than this.
pub const MAX_STRING_LEN: usize = 4096;

/// What was wrong with bytes that did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what}: bad magic {found:#x} (expected {expected:#x}); the peer does not speak NBD newstyle")]
    Magic {
        what: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn need(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), WireError> {
    if bytes.len() != expected {
        return Err(WireError::Length {
            what,
            expected,
            got: bytes.len(),
        });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The server's first message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_server_greeting(handshake_flags: u16) -> [u8; SERVER_GREETING_LEN] {
    let mut out = [0u8; SERVER_GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// Decode the server greeting; returns the handshake flags. Oldstyle servers
/// (second magic `cliserv_magic`) are refused with [`WireError::Magic`].
pub fn decode_server_greeting(bytes: &[u8]) -> Result<u16, WireError> {
    need("server greeting", bytes, SERVER_GREETING_LEN)?;
    for (at, expected) in [(0, NBD_MAGIC), (8, IHAVEOPT)] {
        let found = be64(bytes, at);
        if found != expected {
            return Err(WireError::Magic {
                what: "server greeting",
                expected,
                found,
            });
        }
    }
    Ok(be16(bytes, 16))
}

pub fn encode_client_flags(flags: u32) -> [u8; CLIENT_FLAGS_LEN] {
    flags.to_be_bytes()
}

pub fn decode_client_flags(bytes: &[u8]) -> Result<u32, WireError> {
    need("client flags", bytes, CLIENT_FLAGS_LEN)?;
    Ok(be32(bytes, 0))
}

/// The header of an option request; `length` bytes of option data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionRequestHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionRequestHeader {
    pub fn encode(&self) -> [u8; OPTION_REQUEST_HEADER_LEN] {
        let mut out = [0u8; OPTION_REQUEST_HEADER_LEN];
        out[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        need("option request header", bytes, OPTION_REQUEST_HEADER_LEN)?;
        let magic = be64(bytes, 0);
        if magic != IHAVEOPT {
            return Err(WireError::Magic {
                what: "option request",
                expected: IHAVEOPT,
                found: magic,
            });
        }
        Ok(Self {
            option: be32(bytes, 8),
            length: be32(bytes, 12),
        })
    }
}

/// A whole option request (header and data), for clients.
pub fn encode_option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let header = OptionRequestHeader {
        option,
        length: data.len() as u32,
    };
    let mut out = Vec::with_capacity(OPTION_REQUEST_HEADER_LEN + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    out
}

/// The header of an option reply; `length` bytes of reply data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn encode(&self) -> [u8; OPTION_REPLY_HEADER_LEN] {
        let mut out = [0u8; OPTION_REPLY_HEADER_LEN];
        out[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        out[16..20].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        need("option reply header", bytes, OPTION_REPLY_HEADER_LEN)?;
        let magic = be64(bytes, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(WireError::Magic {
                what: "option reply",
                expected: OPTION_REPLY_MAGIC,
                found: magic,
            });
        }
        Ok(Self {
            option: be32(bytes, 8),
            reply_type: be32(bytes, 12),
            length: be32(bytes, 16),
        })
    }

    pub fn is_error(&self) -> bool {
        self.reply_type & REP_FLAG_ERROR != 0
    }
}

/// A whole option reply (header and data), for servers.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let header = OptionReplyHeader {
        option,
        reply_type,
        length: data.len() as u32,
    };
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(data);
    out
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124
/// zeroes unless the client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, transmission_flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_ZEROES);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.resize(10 + EXPORT_NAME_ZEROES, 0);
    }
    out
}

/// Decode the first 10 bytes of an `NBD_OPT_EXPORT_NAME` reply (the caller
/// skips the zeroes when it did not negotiate no-zeroes): (size, flags).
pub fn decode_export_name_reply(bytes: &[u8]) -> Result<(u64, u16), WireError> {
    need("export name reply", bytes, 10)?;
    Ok((be64(bytes, 0), be16(bytes, 8)))
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO` request: an export name and
/// the information items wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Raw name bytes; empty means the default export.
    pub name: Vec<u8>,
    pub requests: Vec<u16>,
}

impl InfoRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.name.len() + 2 + 2 * self.requests.len());
        out.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            out.extend_from_slice(&r.to_be_bytes());
        }
        out
    }

    /// Decode option data; any length inconsistency is an error (the server
    /// answers `NBD_REP_ERR_INVALID`).
    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        let invalid = |reason: String| WireError::Invalid {
            what: "NBD_OPT_INFO/GO data",
            reason,
        };
        if data.len() < 6 {
            return Err(invalid(format!(
                "{} bytes is shorter than the minimum 6",
                data.len()
            )));
        }
        let name_len = be32(data, 0) as usize;
        if name_len > data.len() - 6 {
            return Err(invalid(format!(
                "name length {name_len} exceeds option data length {} - 6",
                data.len()
            )));
        }
        let name = data[4..4 + name_len].to_vec();
        let at = 4 + name_len;
        let count = be16(data, at) as usize;
        let rest = &data[at + 2..];
        if rest.len() != 2 * count {
            return Err(invalid(format!(
                "{count} information requests need {} bytes, {} present",
                2 * count,
                rest.len()
            )));
        }
        let requests = rest.chunks_exact(2).map(|c| be16(c, 0)).collect();
        Ok(Self { name, requests })
    }
}

/// The data of an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoReply {
    Export {
        size: u64,
        transmission_flags: u16,
    },
    Name(String),
    Description(String),
    BlockSize {
        minimum: u32,
        preferred: u32,
        maximum: u32,
    },
    /// An information type this crate does not know; clients must ignore it.
    Unknown {
        info_type: u16,
        payload: Vec<u8>,
    },
}

impl InfoReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14);
        match self {
            InfoReply::Export {
                size,
                transmission_flags,
            } => {
                out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&transmission_flags.to_be_bytes());
            }
            InfoReply::Name(name) => {
                out.extend_from_slice(&INFO_NAME.to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            InfoReply::Description(text) => {
                out.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            InfoReply::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                out.extend_from_slice(&minimum.to_be_bytes());
                out.extend_from_slice(&preferred.to_be_bytes());
                out.extend_from_slice(&maximum.to_be_bytes());
            }
            InfoReply::Unknown { info_type, payload } => {
                out.extend_from_slice(&info_type.to_be_bytes());
                out.extend_from_slice(payload);
            }
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        let invalid = |reason: String| WireError::Invalid {
            what: "NBD_REP_INFO data",
            reason,
        };
        if data.len() < 2 {
            return Err(invalid(format!(
                "{} bytes is shorter than the type field",
                data.len()
            )));
        }
        let info_type = be16(data, 0);
        let payload = &data[2..];
        let exact = |n: usize| {
            if payload.len() == n {
                Ok(())
            } else {
                Err(invalid(format!(
                    "information type {info_type} needs length {}, got {}",
                    n + 2,
                    data.len()
                )))
            }
        };
        let text = |p: &[u8]| {
            String::from_utf8(p.to_vec()).map_err(|_| invalid("string is not UTF-8".into()))
        };
        Ok(match info_type {
            INFO_EXPORT => {
                exact(10)?;
                InfoReply::Export {
                    size: be64(payload, 0),
                    transmission_flags: be16(payload, 8),
                }
            }
            INFO_NAME => InfoReply::Name(text(payload)?),
            INFO_DESCRIPTION => InfoReply::Description(text(payload)?),
            INFO_BLOCK_SIZE => {
                exact(12)?;
                InfoReply::BlockSize {
                    minimum: be32(payload, 0),
                    preferred: be32(payload, 4),
                    maximum: be32(payload, 8),
                }
            }
            _ => InfoReply::Unknown {
                info_type,
                payload: payload.to_vec(),
            },
        })
    }
}

/// A transmission request header; `CMD_WRITE` is followed by `length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Decode a header; a bad magic means the stream lost framing and the
    /// connection must be dropped.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        need("request header", bytes, REQUEST_HEADER_LEN)?;
        let magic = be32(bytes, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::Magic {
                what: "request",
                expected: REQUEST_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(Self {
            flags: be16(bytes, 4),
            command: be16(bytes, 6),
            handle: be64(bytes, 8),
            offset: be64(bytes, 16),
            length: be32(bytes, 24),
        })
    }
}

/// A simple reply header; a successful `CMD_READ` reply is followed by the
/// requested number of bytes, every other reply by nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReplyHeader {
    pub error: u32,
    pub handle: u64,
}

impl SimpleReplyHeader {
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
        let mut out = [0u8; SIMPLE_REPLY_HEADER_LEN];
        out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        need("simple reply header", bytes, SIMPLE_REPLY_HEADER_LEN)?;
        let magic = be32(bytes, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(WireError::Magic {
                what: "simple reply",
                expected: SIMPLE_REPLY_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(Self {
            error: be32(bytes, 4),
            handle: be64(bytes, 8),
        })
    }
}

/// Human-readable name of an option, for logs and error messages.
pub fn option_name(option: u32) -> OptionName {
    OptionName(option)
}

/// Display wrapper returned by [`option_name`].
#[derive(Debug, Clone, Copy)]
pub struct OptionName(pub u32);

impl fmt::Display for OptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            OPT_ABORT => "NBD_OPT_ABORT",
            OPT_LIST => "NBD_OPT_LIST",
            OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
            OPT_STARTTLS => "NBD_OPT_STARTTLS",
            OPT_INFO => "NBD_OPT_INFO",
            OPT_GO => "NBD_OPT_GO",
            OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            other => return write!(f, "option {other}"),
        };
        f.write_str(name)
    }
}

/// Human-readable name of an NBD error value.
pub fn error_name(error: u32) -> &'static str {
    match error {
        0 => "OK",
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_flags() {
        let g = encode_server_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0x00, 0x03]);
        assert_eq!(decode_server_greeting(&g).unwrap(), 3);
    }

    #[test]
    fn oldstyle_greeting_is_refused() {
        let mut g = Vec::new();
        g.extend_from_slice(b"NBDMAGIC");
        g.extend_from_slice(&0x0000_4202_8186_1253_u64.to_be_bytes());
        g.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode_server_greeting(&g),
            Err(WireError::Magic { .. })
        ));
        assert!(matches!(
            decode_server_greeting(&g[..10]),
            Err(WireError::Length { .. })
        ));
    }

    #[test]
    fn client_flags_round_trip() {
        assert_eq!(encode_client_flags(3), [0, 0, 0, 3]);
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 1]).unwrap(),
            FLAG_C_FIXED_NEWSTYLE
        );
    }

    #[test]
    fn option_request_literal_bytes() {
        // IHAVEOPT, NBD_OPT_GO (7), length 10.
        let bytes = [
            0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 10,
        ];
        let h = OptionRequestHeader::decode(&bytes).unwrap();
        assert_eq!(
            h,
            OptionRequestHeader {
                option: OPT_GO,
                length: 10
            }
        );
        assert_eq!(h.encode(), bytes);
        let mut bad = bytes;
        bad[0] = 0;
        assert!(matches!(
            OptionRequestHeader::decode(&bad),
            Err(WireError::Magic { .. })
        ));
    }

    #[test]
    fn option_reply_literal_bytes() {
        let r = encode_option_reply(OPT_LIST, REP_ERR_UNSUP, b"");
        assert_eq!(
            r,
            [
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // magic
                0, 0, 0, 3, // option
                0x80, 0, 0, 1, // NBD_REP_ERR_UNSUP
                0, 0, 0, 0, // length
            ]
        );
        let h = OptionReplyHeader::decode(&r).unwrap();
        assert!(h.is_error());
        assert_eq!(h.reply_type, REP_ERR_UNSUP);
        let ack = OptionReplyHeader::decode(&encode_option_reply(OPT_GO, REP_ACK, b"")).unwrap();
        assert!(!ack.is_error());
    }

    #[test]
    fn export_name_reply_with_and_without_zeroes() {
        let r = encode_export_name_reply(4 << 20, FLAG_HAS_FLAGS | FLAG_SEND_FLUSH, false);
        assert_eq!(r.len(), 134);
        assert_eq!(&r[0..10], &[0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0x05]);
        assert!(r[10..].iter().all(|&b| b == 0));
        let r = encode_export_name_reply(4 << 20, 1, true);
        assert_eq!(r.len(), 10);
        assert_eq!(decode_export_name_reply(&r).unwrap(), (4 << 20, 1));
    }

    #[test]
    fn info_request_round_trip_and_literal() {
        let req = InfoRequest {
            name: b"sf".to_vec(),
            requests: vec![INFO_BLOCK_SIZE],
        };
        let bytes = req.encode();
        assert_eq!(bytes, [0, 0, 0, 2, b's', b'f', 0, 1, 0, 3]);
        assert_eq!(InfoRequest::decode(&bytes).unwrap(), req);
        // Default export, no requests: the 6-byte minimum.
        assert_eq!(
            InfoRequest::decode(&[0, 0, 0, 0, 0, 0]).unwrap(),
            InfoRequest {
                name: vec![],
                requests: vec![]
            }
        );
    }

    #[test]
    fn info_request_rejects_inconsistent_lengths() {
        for bad in [
            &[][..],
            &[0, 0, 0, 0, 0][..],
            &[0, 0, 0, 9, b'a', 0, 0][..], // name longer than data
            &[0, 0, 0, 0, 0, 2, 0, 3][..], // two requests, one present
            &[0, 0, 0, 0, 0, 0, 0, 3][..], // trailing bytes
            &[0xff, 0xff, 0xff, 0xff, 0, 0][..], // huge name length
        ] {
            assert!(
                matches!(InfoRequest::decode(bad), Err(WireError::Invalid { .. })),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn info_replies_literal_bytes() {
        let export = InfoReply::Export {
            size: 0x0010_0000,
            transmission_flags: 0x010d,
        };
        let bytes = export.encode();
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x0d]);
        assert_eq!(InfoReply::decode(&bytes).unwrap(), export);

        let bs = InfoReply::BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 32 << 20,
        };
        let bytes = bs.encode();
        assert_eq!(bytes, [0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0x02, 0, 0, 0]);
        assert_eq!(InfoReply::decode(&bytes).unwrap(), bs);

        let name = InfoReply::Name("statefile".into());
        assert_eq!(InfoReply::decode(&name.encode()).unwrap(), name);
        let desc = InfoReply::Description("HA statefile".into());
        assert_eq!(InfoReply::decode(&desc.encode()).unwrap(), desc);

        assert_eq!(
            InfoReply::decode(&[0, 9, 1, 2]).unwrap(),
            InfoReply::Unknown {
                info_type: 9,
                payload: vec![1, 2]
            }
        );
        assert!(InfoReply::decode(&[0, 0, 1]).is_err());
        assert!(InfoReply::decode(&[0]).is_err());
    }

    #[test]
    fn request_header_literal_bytes() {
        let bytes = [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01, // flags: FUA
            0x00, 0x01, // type: WRITE
            1, 2, 3, 4, 5, 6, 7, 8, // handle
            0, 0, 0, 0, 0, 0, 0x02, 0x00, // offset 512
            0, 0, 0x04, 0x00, // length 1024
        ];
        let h = RequestHeader::decode(&bytes).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                flags: CMD_FLAG_FUA,
                command: CMD_WRITE,
                handle: 0x0102_0304_0506_0708,
                offset: 512,
                length: 1024
            }
        );
        assert_eq!(h.encode(), bytes);
        let mut bad = bytes;
        bad[3] = 0x14;
        assert!(matches!(
            RequestHeader::decode(&bad),
            Err(WireError::Magic { .. })
        ));
        assert!(RequestHeader::decode(&bytes[..27]).is_err());
    }

    #[test]
    fn simple_reply_literal_bytes() {
        let r = SimpleReplyHeader {
            error: EINVAL,
            handle: 42,
        };
        let bytes = r.encode();
        assert_eq!(
            bytes,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 42]
        );
        assert_eq!(SimpleReplyHeader::decode(&bytes).unwrap(), r);
        let mut bad = bytes;
        bad[0] = 0x66;
        assert!(SimpleReplyHeader::decode(&bad).is_err());
    }

    #[test]
    fn names_for_logs() {
        assert_eq!(option_name(OPT_GO).to_string(), "NBD_OPT_GO");
        assert_eq!(option_name(99).to_string(), "option 99");
        assert_eq!(error_name(EIO), "EIO");
    }
}
