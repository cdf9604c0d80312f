//! The fixed newstyle NBD handshake as a sans-I/O state machine.
//!
//! Bytes from the client go in through [`Handshake::receive`]; bytes for the
//! client come out of [`Handshake::take_output`]; the returned [`Progress`]
//! says whether to keep reading, to enter transmission, or to close. The tokio
//! layer in `server.rs` only moves bytes.
//!
//! The single export answers to its configured name and to the empty name:
//! the protocol reserves the empty name for the "default" export, which is
//! what the kernel's `nbd-client` without `-N` and URIs like
//! `nbd+unix:///?socket=...` ask for. A server with one export has no reason
//! to refuse it.

use heartbeat_wire::nbd::{self, InfoReply, InfoRequest, OptionRequestHeader};

/// Option data longer than this is treated as a denial-of-service attempt
/// (the protocol allows a hard disconnect then). Real options are tiny: an
/// export name is at most 4096 bytes.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// The advertised block size constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// What the handshake tells clients about the one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub transmission_flags: u16,
    pub block_size: BlockSize,
}

impl ExportInfo {
    /// Whether a client-supplied name selects this export.
    pub fn answers_to(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// Why the handshake ended without entering transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `NBD_OPT_ABORT` (soft disconnect).
    ClientAborted,
    /// The client set client flags this server does not know.
    UnknownClientFlags(u32),
    /// An option header without the `IHAVEOPT` magic.
    BadOptionMagic(u64),
    /// Option data too large to read safely.
    OptionTooLarge { option: u32, length: u32 },
    /// `NBD_OPT_EXPORT_NAME` for a name this server does not export: that
    /// option cannot return an error, so the spec mandates closing.
    UnknownExport(String),
}

/// What the I/O layer should do after a [`Handshake::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Flush the output (if any) and read more.
    NeedInput,
    /// Flush the output, then switch to transmission. `leftover` holds bytes
    /// the client already sent past the end of the handshake.
    Transmission { leftover: Vec<u8> },
    /// Flush the output (if any), then close the connection.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData(OptionRequestHeader),
    Finished,
}

/// One connection's handshake.
#[derive(Debug)]
pub struct Handshake {
    export: ExportInfo,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    no_zeroes: bool,
}

impl Handshake {
    /// A new handshake; the greeting is already queued as output.
    pub fn new(export: ExportInfo) -> Self {
        let greeting = nbd::encode_server_greeting(nbd::FLAG_FIXED_NEWSTYLE | nbd::FLAG_NO_ZEROES);
        Self {
            export,
            state: State::ClientFlags,
            input: Vec::new(),
            output: greeting.to_vec(),
            no_zeroes: false,
        }
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Feed bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) -> Progress {
        self.input.extend_from_slice(bytes);
        loop {
            match self.state {
                State::Finished => return Progress::NeedInput,
                State::ClientFlags => {
                    let Some(raw) = self.take(nbd::CLIENT_FLAGS_LEN) else {
                        return Progress::NeedInput;
                    };
                    let flags = nbd::decode_client_flags(&raw).expect("exact length");
                    if flags & !nbd::KNOWN_CLIENT_FLAGS != 0 {
                        return self.close(CloseReason::UnknownClientFlags(flags));
                    }
                    self.no_zeroes = flags & nbd::FLAG_C_NO_ZEROES != 0;
                    self.state = State::OptionHeader;
                }
                State::OptionHeader => {
                    let Some(raw) = self.take(nbd::OPTION_REQUEST_HEADER_LEN) else {
                        return Progress::NeedInput;
                    };
                    let header = match OptionRequestHeader::decode(&raw) {
                        Ok(h) => h,
                        Err(_) => {
                            let magic = u64::from_be_bytes(raw[0..8].try_into().expect("8"));
                            return self.close(CloseReason::BadOptionMagic(magic));
                        }
                    };
                    if header.length > MAX_OPTION_DATA {
                        return self.close(CloseReason::OptionTooLarge {
                            option: header.option,
                            length: header.length,
                        });
                    }
                    self.state = State::OptionData(header);
                }
                State::OptionData(header) => {
                    let Some(data) = self.take(header.length as usize) else {
                        return Progress::NeedInput;
                    };
                    self.state = State::OptionHeader;
                    if let Some(done) = self.handle_option(header.option, &data) {
                        return done;
                    }
                }
            }
        }
    }

    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.input.len() < n {
            return None;
        }
        Some(self.input.drain(..n).collect())
    }

    fn close(&mut self, reason: CloseReason) -> Progress {
        self.state = State::Finished;
        Progress::Close(reason)
    }

    fn transmission(&mut self) -> Progress {
        self.state = State::Finished;
        Progress::Transmission {
            leftover: std::mem::take(&mut self.input),
        }
    }

    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        // An error reply carries a UTF-8 message that the spec caps at
        // MAX_STRING_LEN bytes; messages may echo client input, so cut them.
        let data = if reply_type & nbd::REP_FLAG_ERROR != 0 && data.len() > nbd::MAX_STRING_LEN {
            let mut end = nbd::MAX_STRING_LEN;
            while end > 0 && !is_utf8_boundary(data, end) {
                end -= 1;
            }
            &data[..end]
        } else {
            data
        };
        self.output
            .extend_from_slice(&nbd::encode_option_reply(option, reply_type, data));
    }

    /// Handle one complete option; `Some` ends the handshake.
    fn handle_option(&mut self, option: u32, data: &[u8]) -> Option<Progress> {
        match option {
            nbd::OPT_EXPORT_NAME => {
                if !self.export.answers_to(data) {
                    let name = String::from_utf8_lossy(data).into_owned();
                    return Some(self.close(CloseReason::UnknownExport(name)));
                }
                let reply = nbd::encode_export_name_reply(
                    self.export.size,
                    self.export.transmission_flags,
                    self.no_zeroes,
                );
                self.output.extend_from_slice(&reply);
                Some(self.transmission())
            }
            nbd::OPT_ABORT => {
                self.reply(option, nbd::REP_ACK, &[]);
                Some(self.close(CloseReason::ClientAborted))
            }
            nbd::OPT_LIST => {
                if !data.is_empty() {
                    self.reply(
                        option,
                        nbd::REP_ERR_INVALID,
                        b"NBD_OPT_LIST carries no data",
                    );
                    return None;
                }
                let name = self.export.name.as_bytes();
                let mut entry = Vec::with_capacity(4 + name.len());
                entry.extend_from_slice(&(name.len() as u32).to_be_bytes());
                entry.extend_from_slice(name);
                self.reply(option, nbd::REP_SERVER, &entry);
                self.reply(option, nbd::REP_ACK, &[]);
                None
            }
            nbd::OPT_INFO | nbd::OPT_GO => {
                let request = match InfoRequest::decode(data) {
                    Ok(r) => r,
                    Err(e) => {
                        self.reply(option, nbd::REP_ERR_INVALID, e.to_string().as_bytes());
                        return None;
                    }
                };
                if !self.export.answers_to(&request.name) {
                    let msg = format!(
                        "no export named {:?} here; this server exports {:?} (or the default export \"\")",
                        String::from_utf8_lossy(&request.name),
                        self.export.name
                    );
                    self.reply(option, nbd::REP_ERR_UNKNOWN, msg.as_bytes());
                    return None;
                }
                self.send_info(option, &request);
                self.reply(option, nbd::REP_ACK, &[]);
                (option == nbd::OPT_GO).then(|| self.transmission())
            }
            _ => {
                // STARTTLS, STRUCTURED_REPLY, meta contexts and anything
                // unknown: not supported, the client carries on without.
                let msg = format!(
                    "{} is not supported by this server",
                    nbd::option_name(option)
                );
                self.reply(option, nbd::REP_ERR_UNSUP, msg.as_bytes());
                None
            }
        }
    }

    fn send_info(&mut self, option: u32, request: &InfoRequest) {
        let export = InfoReply::Export {
            size: self.export.size,
            transmission_flags: self.export.transmission_flags,
        };
        self.reply(option, nbd::REP_INFO, &export.encode());
        // Block sizes go out even unasked: the constraints are advisory for
        // clients that did not ask, and this server accepts any alignment.
        let bs = self.export.block_size;
        let block_size = InfoReply::BlockSize {
            minimum: bs.minimum,
            preferred: bs.preferred,
            maximum: bs.maximum,
        };
        self.reply(option, nbd::REP_INFO, &block_size.encode());
        if request.requests.contains(&nbd::INFO_NAME) {
            let name = InfoReply::Name(self.export.name.clone());
            self.reply(option, nbd::REP_INFO, &name.encode());
        }
        if request.requests.contains(&nbd::INFO_DESCRIPTION) && !self.export.description.is_empty()
        {
            let desc = InfoReply::Description(self.export.description.clone());
            self.reply(option, nbd::REP_INFO, &desc.encode());
        }
    }
}

/// Whether `end` falls between UTF-8 characters of `data` (a continuation
/// byte has the top bits `10`).
fn is_utf8_boundary(data: &[u8], end: usize) -> bool {
    end >= data.len() || data[end] & 0xC0 != 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeat_wire::nbd::OptionReplyHeader;

    fn export() -> ExportInfo {
        ExportInfo {
            name: "statefile".into(),
            description: "test volume".into(),
            size: 4 << 20,
            transmission_flags: nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH,
            block_size: BlockSize {
                minimum: 512,
                preferred: 4096,
                maximum: 32 << 20,
            },
        }
    }

    /// Split server output into option replies: (option, type, data).
    fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let h = OptionReplyHeader::decode(&out[..20]).unwrap();
            let end = 20 + h.length as usize;
            v.push((h.option, h.reply_type, out[20..end].to_vec()));
            out = &out[end..];
        }
        v
    }

    fn started(client_flags: u32) -> Handshake {
        let mut hs = Handshake::new(export());
        let greeting = hs.take_output();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(&greeting[16..], &[0, 3]);
        assert_eq!(hs.receive(&client_flags.to_be_bytes()), Progress::NeedInput);
        hs
    }

    fn go(name: &[u8], requests: Vec<u16>) -> Vec<u8> {
        let data = InfoRequest {
            name: name.to_vec(),
            requests,
        }
        .encode();
        nbd::encode_option_request(nbd::OPT_GO, &data)
    }

    #[test]
    fn export_name_enters_transmission_with_zeroes() {
        let mut hs = started(nbd::FLAG_C_FIXED_NEWSTYLE);
        let p = hs.receive(&nbd::encode_option_request(
            nbd::OPT_EXPORT_NAME,
            b"statefile",
        ));
        assert_eq!(p, Progress::Transmission { leftover: vec![] });
        let out = hs.take_output();
        assert_eq!(out.len(), 134);
        assert_eq!(
            nbd::decode_export_name_reply(&out[..10]).unwrap(),
            (4 << 20, 5)
        );
    }

    #[test]
    fn export_name_with_no_zeroes_and_pipelined_request() {
        let mut hs = started(nbd::FLAG_C_FIXED_NEWSTYLE | nbd::FLAG_C_NO_ZEROES);
        let mut bytes = nbd::encode_option_request(nbd::OPT_EXPORT_NAME, b"");
        bytes.extend_from_slice(b"extra");
        let p = hs.receive(&bytes);
        assert_eq!(
            p,
            Progress::Transmission {
                leftover: b"extra".to_vec()
            }
        );
        assert_eq!(hs.take_output().len(), 10);
    }

    #[test]
    fn export_name_unknown_closes() {
        let mut hs = started(1);
        let p = hs.receive(&nbd::encode_option_request(nbd::OPT_EXPORT_NAME, b"other"));
        assert_eq!(
            p,
            Progress::Close(CloseReason::UnknownExport("other".into()))
        );
        assert!(hs.take_output().is_empty());
    }

    #[test]
    fn unknown_client_flags_close() {
        let mut hs = Handshake::new(export());
        hs.take_output();
        assert_eq!(
            hs.receive(&[0, 0, 0, 4]),
            Progress::Close(CloseReason::UnknownClientFlags(4))
        );
    }

    #[test]
    fn go_replies_export_and_block_size_then_ack() {
        let mut hs = started(3);
        // Fed one byte at a time: framing must not depend on read sizes.
        let bytes = go(b"statefile", vec![nbd::INFO_BLOCK_SIZE, nbd::INFO_NAME]);
        let mut last = Progress::NeedInput;
        for b in &bytes {
            last = hs.receive(std::slice::from_ref(b));
        }
        assert_eq!(last, Progress::Transmission { leftover: vec![] });
        let r = replies(&hs.take_output());
        assert_eq!(r.len(), 4);
        assert!(r[..3]
            .iter()
            .all(|(o, t, _)| *o == nbd::OPT_GO && *t == nbd::REP_INFO));
        assert_eq!(
            InfoReply::decode(&r[0].2).unwrap(),
            InfoReply::Export {
                size: 4 << 20,
                transmission_flags: 5
            }
        );
        assert_eq!(
            InfoReply::decode(&r[1].2).unwrap(),
            InfoReply::BlockSize {
                minimum: 512,
                preferred: 4096,
                maximum: 32 << 20
            }
        );
        assert_eq!(
            InfoReply::decode(&r[2].2).unwrap(),
            InfoReply::Name("statefile".into())
        );
        assert_eq!((r[3].1, r[3].2.len()), (nbd::REP_ACK, 0));
    }

    #[test]
    fn info_does_not_end_handshake_and_default_name_works() {
        let mut hs = started(1);
        let data = InfoRequest {
            name: vec![],
            requests: vec![],
        }
        .encode();
        assert_eq!(
            hs.receive(&nbd::encode_option_request(nbd::OPT_INFO, &data)),
            Progress::NeedInput
        );
        let r = replies(&hs.take_output());
        assert_eq!(r.last().unwrap().1, nbd::REP_ACK);
        assert_eq!(
            hs.receive(&go(b"", vec![])),
            Progress::Transmission { leftover: vec![] }
        );
    }

    #[test]
    fn go_with_wrong_name_is_err_unknown_and_handshake_continues() {
        let mut hs = started(1);
        assert_eq!(hs.receive(&go(b"nope", vec![])), Progress::NeedInput);
        let r = replies(&hs.take_output());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, nbd::REP_ERR_UNKNOWN);
        assert!(String::from_utf8_lossy(&r[0].2).contains("nope"));
        assert_eq!(
            hs.receive(&go(b"statefile", vec![])),
            Progress::Transmission { leftover: vec![] }
        );
    }

    #[test]
    fn error_messages_echoing_a_long_name_stay_within_the_string_limit() {
        // Found by the nbd_handshake fuzz target: a 4 KiB export name.
        let mut hs = started(1);
        let long = "é".repeat(3000); // two bytes each: the cut must land between characters
        assert_eq!(
            hs.receive(&go(long.as_bytes(), vec![])),
            Progress::NeedInput
        );
        let r = replies(&hs.take_output());
        assert_eq!(r[0].1, nbd::REP_ERR_UNKNOWN);
        assert!(r[0].2.len() <= nbd::MAX_STRING_LEN);
        assert!(
            std::str::from_utf8(&r[0].2).is_ok(),
            "cut inside a character"
        );
    }

    #[test]
    fn malformed_go_is_err_invalid() {
        let mut hs = started(1);
        let p = hs.receive(&nbd::encode_option_request(
            nbd::OPT_GO,
            &[0, 0, 0, 50, 0, 0],
        ));
        assert_eq!(p, Progress::NeedInput);
        assert_eq!(replies(&hs.take_output())[0].1, nbd::REP_ERR_INVALID);
    }

    #[test]
    fn unknown_and_unsupported_options_get_err_unsup() {
        let mut hs = started(1);
        for opt in [
            nbd::OPT_STRUCTURED_REPLY,
            nbd::OPT_STARTTLS,
            nbd::OPT_SET_META_CONTEXT,
            0x1234,
        ] {
            assert_eq!(
                hs.receive(&nbd::encode_option_request(opt, b"ignored data")),
                Progress::NeedInput
            );
            let r = replies(&hs.take_output());
            assert_eq!((r[0].0, r[0].1), (opt, nbd::REP_ERR_UNSUP));
        }
    }

    #[test]
    fn list_returns_the_export() {
        let mut hs = started(1);
        hs.receive(&nbd::encode_option_request(nbd::OPT_LIST, b""));
        let r = replies(&hs.take_output());
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, nbd::REP_SERVER);
        assert_eq!(&r[0].2[..4], &[0, 0, 0, 9]);
        assert_eq!(&r[0].2[4..], b"statefile");
        assert_eq!(r[1].1, nbd::REP_ACK);
        hs.receive(&nbd::encode_option_request(nbd::OPT_LIST, b"x"));
        assert_eq!(replies(&hs.take_output())[0].1, nbd::REP_ERR_INVALID);
    }

    #[test]
    fn abort_acks_and_closes() {
        let mut hs = started(1);
        let p = hs.receive(&nbd::encode_option_request(nbd::OPT_ABORT, b""));
        assert_eq!(p, Progress::Close(CloseReason::ClientAborted));
        assert_eq!(replies(&hs.take_output())[0].1, nbd::REP_ACK);
    }

    #[test]
    fn bad_magic_and_huge_option_close() {
        let mut hs = started(1);
        let mut bytes = nbd::encode_option_request(nbd::OPT_LIST, b"");
        bytes[0] = b'X';
        assert!(matches!(
            hs.receive(&bytes),
            Progress::Close(CloseReason::BadOptionMagic(_))
        ));
        let mut hs = started(1);
        let header = OptionRequestHeader {
            option: 99,
            length: MAX_OPTION_DATA + 1,
        };
        assert!(matches!(
            hs.receive(&header.encode()),
            Progress::Close(CloseReason::OptionTooLarge { .. })
        ));
    }
}
