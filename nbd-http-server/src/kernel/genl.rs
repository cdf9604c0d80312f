//! Generic netlink messages for the kernel's `nbd` family, as bytes in and
//! bytes out (no sockets here, so every encoding and decoding path is unit
//! tested without the `nbd` module).
//!
//! Layout (all integers native-endian, which netlink is):
//! `nlmsghdr` (16 bytes) + `genlmsghdr` (4 bytes) + attributes, each
//! `nlattr` (len u16, type u16) + payload, padded to 4 bytes.
//! Constants from `include/uapi/linux/{netlink,genetlink,nbd-netlink}.h`.

/// `NETLINK_GENERIC`.
pub const NETLINK_GENERIC: i32 = 16;

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// The generic netlink controller (resolves family names to ids).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub const NBD_GENL_FAMILY_NAME: &str = "nbd";
const NBD_GENL_VERSION: u8 = 1;

/// `NBD_CMD_*` of `nbd-netlink.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NbdCommand {
    Connect = 1,
    Disconnect = 2,
    Reconfigure = 3,
    Status = 5,
}

// NBD_ATTR_*
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_DEVICE_LIST: u16 = 9;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;
const NBD_DEVICE_ITEM: u16 = 1;
const NBD_DEVICE_INDEX: u16 = 1;
const NBD_DEVICE_CONNECTED: u16 = 2;

/// Builds one generic netlink request.
pub struct GenlRequest {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl GenlRequest {
    /// A request to `family` with `NLM_F_REQUEST | NLM_F_ACK`: the kernel
    /// always answers with an `NLMSG_ERROR` (0 = success) after any reply.
    pub fn new(family: u16, cmd: u8, version: u8, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + payload.len()).expect("netlink attribute fits in u16");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }

    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    pub fn u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute (`NLA_STRING`/`NLA_NUL_STRING`).
    pub fn string(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut payload = Vec::with_capacity(s.len() + 1);
        payload.extend_from_slice(s.as_bytes());
        payload.push(0);
        self.attr(kind, &payload)
    }

    pub fn begin_nested(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nested(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("end_nested without begin_nested");
        let len = u16::try_from(self.buf.len() - start).expect("nested attribute fits in u16");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unterminated nested attribute");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`.
pub fn get_family(name: &str, seq: u32) -> Vec<u8> {
    let mut req = GenlRequest::new(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq);
    req.string(CTRL_ATTR_FAMILY_NAME, name);
    req.finish()
}

/// What NBD_CMD_CONNECT configures. Times are whole seconds (the kernel's unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAttrs {
    pub index: Option<u32>,
    pub size_bytes: u64,
    pub block_size: u64,
    pub timeout_secs: u64,
    pub dead_conn_timeout_secs: u64,
    pub server_flags: u64,
    pub client_flags: u64,
    pub backend_id: Option<String>,
    pub socket_fds: Vec<u32>,
}

fn put_sockets(req: &mut GenlRequest, fds: &[u32]) {
    req.begin_nested(NBD_ATTR_SOCKETS);
    for fd in fds {
        req.begin_nested(NBD_SOCK_ITEM);
        req.u32(NBD_SOCK_FD, *fd);
        req.end_nested();
    }
    req.end_nested();
}

pub fn connect(family: u16, seq: u32, a: &ConnectAttrs) -> Vec<u8> {
    let mut req = GenlRequest::new(family, NbdCommand::Connect as u8, NBD_GENL_VERSION, seq);
    if let Some(index) = a.index {
        req.u32(NBD_ATTR_INDEX, index);
    }
    req.u64(NBD_ATTR_SIZE_BYTES, a.size_bytes)
        .u64(NBD_ATTR_BLOCK_SIZE_BYTES, a.block_size)
        .u64(NBD_ATTR_TIMEOUT, a.timeout_secs)
        .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, a.dead_conn_timeout_secs)
        .u64(NBD_ATTR_SERVER_FLAGS, a.server_flags)
        .u64(NBD_ATTR_CLIENT_FLAGS, a.client_flags);
    if let Some(id) = &a.backend_id {
        req.string(NBD_ATTR_BACKEND_IDENTIFIER, id);
    }
    put_sockets(&mut req, &a.socket_fds);
    req.finish()
}

/// What NBD_CMD_RECONFIGURE may change on a connected device: the kernel
/// replaces *dead* sockets with the given ones and updates the timeouts;
/// a backend identifier that differs from the device's makes it refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconfigureAttrs {
    pub index: u32,
    pub timeout_secs: Option<u64>,
    pub dead_conn_timeout_secs: Option<u64>,
    pub backend_id: Option<String>,
    pub socket_fds: Vec<u32>,
}

pub fn reconfigure(family: u16, seq: u32, a: &ReconfigureAttrs) -> Vec<u8> {
    let mut req = GenlRequest::new(family, NbdCommand::Reconfigure as u8, NBD_GENL_VERSION, seq);
    req.u32(NBD_ATTR_INDEX, a.index);
    if let Some(t) = a.timeout_secs {
        req.u64(NBD_ATTR_TIMEOUT, t);
    }
    if let Some(t) = a.dead_conn_timeout_secs {
        req.u64(NBD_ATTR_DEAD_CONN_TIMEOUT, t);
    }
    if let Some(id) = &a.backend_id {
        req.string(NBD_ATTR_BACKEND_IDENTIFIER, id);
    }
    if !a.socket_fds.is_empty() {
        put_sockets(&mut req, &a.socket_fds);
    }
    req.finish()
}

pub fn disconnect(family: u16, seq: u32, index: u32) -> Vec<u8> {
    let mut req = GenlRequest::new(family, NbdCommand::Disconnect as u8, NBD_GENL_VERSION, seq);
    req.u32(NBD_ATTR_INDEX, index);
    req.finish()
}

/// NBD_CMD_STATUS for one device, or for all of them.
pub fn status(family: u16, seq: u32, index: Option<u32>) -> Vec<u8> {
    let mut req = GenlRequest::new(family, NbdCommand::Status as u8, NBD_GENL_VERSION, seq);
    if let Some(index) = index {
        req.u32(NBD_ATTR_INDEX, index);
    }
    req.finish()
}

/// One message received from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `NLMSG_ERROR` with error 0: the acknowledgement ending a request.
    Ack { seq: u32 },
    /// `NLMSG_ERROR` with a negative errno.
    Error { seq: u32, errno: i32 },
    /// `NLMSG_DONE` (end of a dump).
    Done { seq: u32 },
    /// A generic netlink message: command and its attributes (raw).
    Genl { seq: u32, cmd: u8, attrs: &'a [u8] },
    /// Any other message type (ignored by callers).
    Other { seq: u32, kind: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message from the kernel: {0}")]
pub struct Malformed(pub &'static str);

/// Splits a datagram into its netlink messages.
pub fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply<'_>>, Malformed> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(Malformed("message length out of bounds"));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        out.push(match kind {
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(Malformed("short NLMSG_ERROR"));
                }
                let err = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                if err == 0 {
                    Reply::Ack { seq }
                } else {
                    Reply::Error { seq, errno: -err }
                }
            }
            NLMSG_DONE => Reply::Done { seq },
            k if k >= GENL_ID_CTRL => {
                if payload.len() < GENL_HDRLEN {
                    return Err(Malformed("short generic netlink header"));
                }
                Reply::Genl {
                    seq,
                    cmd: payload[0],
                    attrs: &payload[GENL_HDRLEN..],
                }
            }
            k => Reply::Other { seq, kind: k },
        });
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    Ok(out)
}

/// Iterates over `(type, payload)` of a run of attributes.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes(buf[0..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let payload = &buf[NLA_HDRLEN..len];
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
        Some(Ok((kind, payload)))
    })
}

fn find_attr(buf: &[u8], kind: u16) -> Result<Option<&[u8]>, Malformed> {
    for a in attrs(buf) {
        let (k, v) = a?;
        if k == kind {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

fn as_u32(v: &[u8]) -> Result<u32, Malformed> {
    v.get(0..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(Malformed("short u32 attribute"))
}

/// The family id in a `CTRL_CMD_NEWFAMILY` reply.
pub fn family_id(attrs_buf: &[u8]) -> Result<u16, Malformed> {
    let v =
        find_attr(attrs_buf, CTRL_ATTR_FAMILY_ID)?.ok_or(Malformed("no CTRL_ATTR_FAMILY_ID"))?;
    v.get(0..2)
        .map(|b| u16::from_ne_bytes(b.try_into().unwrap()))
        .ok_or(Malformed("short CTRL_ATTR_FAMILY_ID"))
}

/// The device index in the reply to NBD_CMD_CONNECT.
pub fn connected_index(attrs_buf: &[u8]) -> Result<u32, Malformed> {
    as_u32(
        find_attr(attrs_buf, NBD_ATTR_INDEX)?
            .ok_or(Malformed("no NBD_ATTR_INDEX in the connect reply"))?,
    )
}

/// `(index, connected)` for every device of an NBD_CMD_STATUS reply.
pub fn device_list(attrs_buf: &[u8]) -> Result<Vec<(u32, bool)>, Malformed> {
    let mut out = Vec::new();
    let Some(list) = find_attr(attrs_buf, NBD_ATTR_DEVICE_LIST)? else {
        return Ok(out);
    };
    for item in attrs(list) {
        let (kind, item) = item?;
        if kind != NBD_DEVICE_ITEM {
            continue;
        }
        let index = as_u32(
            find_attr(item, NBD_DEVICE_INDEX)?.ok_or(Malformed("device item without index"))?,
        )?;
        let connected = find_attr(item, NBD_DEVICE_CONNECTED)?
            .and_then(|v| v.first().copied())
            .unwrap_or(0)
            != 0;
        out.push((index, connected));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    #[test]
    fn get_family_encodes_the_name_nul_terminated_and_padded() {
        let msg = get_family("nbd", 7);
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes()); // 16 + 4 + 8
        want.extend_from_slice(&u16s(0x10));
        want.extend_from_slice(&u16s(NLM_F_REQUEST | NLM_F_ACK));
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[3, 1, 0, 0]);
        want.extend_from_slice(&u16s(8)); // 4 + "nbd\0"
        want.extend_from_slice(&u16s(2));
        want.extend_from_slice(b"nbd\0");
        assert_eq!(msg, want);
    }

    #[test]
    fn connect_carries_every_attribute_and_nested_sockets() {
        let a = ConnectAttrs {
            index: None,
            size_bytes: 4 << 20,
            block_size: 512,
            timeout_secs: 5,
            dead_conn_timeout_secs: 30,
            server_flags: 0b101,
            client_flags: 0,
            backend_id: Some("http-nbd:sf".into()),
            socket_fds: vec![9],
        };
        let msg = connect(0x1c, 1, &a);
        let replies = parse_replies_of_request(&msg);
        let mut seen = Vec::new();
        for attr in attrs(replies) {
            let (k, v) = attr.unwrap();
            seen.push(k);
            match k {
                NBD_ATTR_SIZE_BYTES => assert_eq!(v, (4u64 << 20).to_ne_bytes()),
                NBD_ATTR_BLOCK_SIZE_BYTES => assert_eq!(v, 512u64.to_ne_bytes()),
                NBD_ATTR_TIMEOUT => assert_eq!(v, 5u64.to_ne_bytes()),
                NBD_ATTR_DEAD_CONN_TIMEOUT => assert_eq!(v, 30u64.to_ne_bytes()),
                NBD_ATTR_SERVER_FLAGS => assert_eq!(v, 5u64.to_ne_bytes()),
                NBD_ATTR_CLIENT_FLAGS => assert_eq!(v, 0u64.to_ne_bytes()),
                NBD_ATTR_BACKEND_IDENTIFIER => assert_eq!(v, b"http-nbd:sf\0"),
                NBD_ATTR_SOCKETS => {
                    // [SOCKETS [SOCK_ITEM [SOCK_FD u32]]], each nest 4 + payload.
                    assert_eq!(v.len(), 4 + 8);
                    let (item_kind, item) = attrs(v).next().unwrap().unwrap();
                    assert_eq!(item_kind, NBD_SOCK_ITEM);
                    let (fd_kind, fd) = attrs(item).next().unwrap().unwrap();
                    assert_eq!((fd_kind, fd), (NBD_SOCK_FD, &9u32.to_ne_bytes()[..]));
                }
                other => panic!("unexpected attribute {other}"),
            }
        }
        assert_eq!(
            seen,
            [
                NBD_ATTR_SIZE_BYTES,
                NBD_ATTR_BLOCK_SIZE_BYTES,
                NBD_ATTR_TIMEOUT,
                NBD_ATTR_DEAD_CONN_TIMEOUT,
                NBD_ATTR_SERVER_FLAGS,
                NBD_ATTR_CLIENT_FLAGS,
                NBD_ATTR_BACKEND_IDENTIFIER,
                NBD_ATTR_SOCKETS
            ]
        );
        // The nested flag is set on the wire (and masked by the parser).
        let sockets_at = msg.len() - 16;
        assert_eq!(
            msg[sockets_at + 2..sockets_at + 4],
            u16s(NBD_ATTR_SOCKETS | NLA_F_NESTED)
        );
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
    }

    /// The attributes of a request we built (skip nlmsghdr + genlmsghdr).
    fn parse_replies_of_request(msg: &[u8]) -> &[u8] {
        &msg[NLMSG_HDRLEN + GENL_HDRLEN..]
    }

    #[test]
    fn connect_with_an_index_puts_it_first_and_reconfigure_only_what_changes() {
        let a = ConnectAttrs {
            index: Some(3),
            size_bytes: 1 << 20,
            block_size: 512,
            timeout_secs: 1,
            dead_conn_timeout_secs: 1,
            server_flags: 1,
            client_flags: 0,
            backend_id: None,
            socket_fds: vec![4],
        };
        let msg = connect(0x1c, 1, &a);
        let (k, v) = attrs(parse_replies_of_request(&msg))
            .next()
            .unwrap()
            .unwrap();
        assert_eq!((k, v), (NBD_ATTR_INDEX, &3u32.to_ne_bytes()[..]));
        assert_eq!(msg[NLMSG_HDRLEN], NbdCommand::Connect as u8);

        let r = ReconfigureAttrs {
            index: 3,
            timeout_secs: None,
            dead_conn_timeout_secs: Some(20),
            backend_id: Some("x".into()),
            socket_fds: vec![6],
        };
        let msg = reconfigure(0x1c, 2, &r);
        assert_eq!(msg[NLMSG_HDRLEN], NbdCommand::Reconfigure as u8);
        let kinds: Vec<u16> = attrs(parse_replies_of_request(&msg))
            .map(|a| a.unwrap().0)
            .collect();
        assert_eq!(
            kinds,
            [
                NBD_ATTR_INDEX,
                NBD_ATTR_DEAD_CONN_TIMEOUT,
                NBD_ATTR_BACKEND_IDENTIFIER,
                NBD_ATTR_SOCKETS
            ]
        );

        let msg = disconnect(0x1c, 3, 3);
        assert_eq!(msg.len(), 16 + 4 + 8);
        let msg = status(0x1c, 4, None);
        assert_eq!(msg.len(), 16 + 4);
    }

    /// A message as the kernel would send it, built with the request encoder.
    fn kernel_message(
        kind: u16,
        seq: u32,
        cmd: u8,
        build: impl FnOnce(&mut GenlRequest),
    ) -> Vec<u8> {
        let mut req = GenlRequest::new(kind, cmd, 1, seq);
        build(&mut req);
        req.finish()
    }

    fn error_message(seq: u32, err: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&u16s(NLMSG_ERROR));
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&err.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]); // the echoed request header
        m
    }

    #[test]
    fn replies_split_into_messages_acks_and_errors() {
        let mut datagram = kernel_message(0x1c, 5, NbdCommand::Connect as u8, |r| {
            r.u32(NBD_ATTR_INDEX, 2);
        });
        datagram.extend(error_message(5, 0));
        datagram.extend(error_message(6, -16));
        let replies = parse_replies(&datagram).unwrap();
        assert_eq!(replies.len(), 3);
        match replies[0] {
            Reply::Genl {
                seq: 5,
                cmd: 1,
                attrs,
            } => assert_eq!(connected_index(attrs).unwrap(), 2),
            ref other => panic!("unexpected {other:?}"),
        }
        assert_eq!(replies[1], Reply::Ack { seq: 5 });
        assert_eq!(replies[2], Reply::Error { seq: 6, errno: 16 });
    }

    #[test]
    fn family_reply_gives_the_id() {
        let msg = kernel_message(GENL_ID_CTRL, 1, 1, |r| {
            r.string(CTRL_ATTR_FAMILY_NAME, "nbd");
            r.attr(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes());
        });
        let replies = parse_replies(&msg).unwrap();
        let Reply::Genl { attrs, .. } = replies[0] else {
            panic!("not genl")
        };
        assert_eq!(family_id(attrs).unwrap(), 0x1d);
    }

    #[test]
    fn status_reply_lists_devices_and_their_connection() {
        let msg = kernel_message(0x1c, 9, NbdCommand::Status as u8, |r| {
            r.begin_nested(NBD_ATTR_DEVICE_LIST);
            for (index, connected) in [(0u32, 1u8), (1, 0), (7, 1)] {
                r.begin_nested(NBD_DEVICE_ITEM);
                r.u32(NBD_DEVICE_INDEX, index);
                r.attr(NBD_DEVICE_CONNECTED, &[connected]);
                r.end_nested();
            }
            r.end_nested();
        });
        let replies = parse_replies(&msg).unwrap();
        let Reply::Genl { attrs, .. } = replies[0] else {
            panic!("not genl")
        };
        assert_eq!(
            device_list(attrs).unwrap(),
            [(0, true), (1, false), (7, true)]
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let msg = kernel_message(0x1c, 1, 1, |r| {
            r.u32(NBD_ATTR_INDEX, 2);
        });
        let mut bad = msg.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_replies(&bad).is_err());
        let attrs_only = &msg[NLMSG_HDRLEN + GENL_HDRLEN..];
        let mut bad_attr = attrs_only.to_vec();
        bad_attr[0..2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(connected_index(&bad_attr).is_err());
        assert!(connected_index(&attrs_only[..6]).is_err());
    }
}
