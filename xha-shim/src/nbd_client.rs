//! A small blocking NBD client: fixed newstyle handshake with `NBD_OPT_GO`,
//! simple replies, one request at a time, READ and WRITE (with FUA when the
//! export offers it). Just enough to put an emulated host on an NBD export
//! without a kernel device; the wire format itself is `heartbeat_wire::nbd`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;

use heartbeat_wire::nbd;
use thiserror::Error;

use crate::statefile::STATEFILE_SIZE;
use crate::target::{AlignedBuf, StatefileTarget};

/// IANA port of NBD, the default of `nbd://` URIs.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an export is, per the NBD URI specification (the subset we need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

/// `nbd+unix:///NAME?socket=PATH` or `nbd://HOST[:PORT]/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub address: NbdAddress,
    pub export: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "bad NBD URI `{uri}`: {reason} (expected nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME)"
)]
pub struct NbdUriError {
    uri: String,
    reason: String,
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl FromStr for NbdUri {
    type Err = NbdUriError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NbdUriError {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| err("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export =
            percent_decode(path).ok_or_else(|| err("bad percent-encoding in the export name"))?;
        let address = match scheme {
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(err("a unix URI has no host"));
                }
                let socket = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("socket="))
                    .ok_or_else(|| err("missing ?socket=PATH"))?;
                let socket = percent_decode(socket)
                    .ok_or_else(|| err("bad percent-encoding in the socket path"))?;
                NbdAddress::Unix(PathBuf::from(socket))
            }
            "nbd" => {
                if authority.is_empty() {
                    return Err(err("missing host"));
                }
                let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                    let (h, after) = v6
                        .split_once(']')
                        .ok_or_else(|| err("unclosed [ in host"))?;
                    (h, after.strip_prefix(':'))
                } else {
                    match authority.rsplit_once(':') {
                        Some((h, p)) => (h, Some(p)),
                        None => (authority, None),
                    }
                };
                let port = match port {
                    Some(p) => p.parse().map_err(|_| err("bad port"))?,
                    None => DEFAULT_PORT,
                };
                NbdAddress::Tcp {
                    host: host.to_string(),
                    port,
                }
            }
            _ => return Err(err("unsupported scheme")),
        };
        Ok(NbdUri { address, export })
    }
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            NbdAddress::Unix(p) => write!(f, "nbd+unix:///{}?socket={}", self.export, p.display()),
            NbdAddress::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddress::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One connection to one export, in transmission phase.
pub struct NbdClient {
    uri: String,
    stream: Box<dyn Stream>,
    size: u64,
    transmission_flags: u16,
    next_handle: u64,
    /// A transport or framing error leaves the stream unusable; every later
    /// request fails at once, as the kernel device would.
    broken: Option<String>,
}

fn protocol_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl NbdClient {
    pub fn connect(uri: &NbdUri) -> io::Result<Self> {
        let stream: Box<dyn Stream> = match &uri.address {
            NbdAddress::Unix(path) => Box::new(UnixStream::connect(path).map_err(|e| {
                io::Error::new(e.kind(), format!("connect {}: {e}", path.display()))
            })?),
            NbdAddress::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .map_err(|e| io::Error::new(e.kind(), format!("connect {host}:{port}: {e}")))?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Self::handshake(uri.to_string(), stream, &uri.export)
    }

    fn handshake(uri: String, mut stream: Box<dyn Stream>, export: &str) -> io::Result<Self> {
        let wire = |e: nbd::WireError| protocol_error(format!("{uri}: {e}"));
        let mut greeting = [0u8; nbd::SERVER_GREETING_LEN];
        stream.read_exact(&mut greeting)?;
        let hs_flags = nbd::decode_server_greeting(&greeting).map_err(wire)?;
        if hs_flags & nbd::FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol_error(format!(
                "{uri}: server does not offer fixed newstyle"
            )));
        }
        let mut client_flags = nbd::FLAG_C_FIXED_NEWSTYLE;
        if hs_flags & nbd::FLAG_NO_ZEROES != 0 {
            client_flags |= nbd::FLAG_C_NO_ZEROES;
        }
        stream.write_all(&nbd::encode_client_flags(client_flags))?;
        let go = nbd::InfoRequest {
            name: export.as_bytes().to_vec(),
            requests: vec![nbd::INFO_BLOCK_SIZE],
        };
        stream.write_all(&nbd::encode_option_request(nbd::OPT_GO, &go.encode()))?;
        stream.flush()?;

        let mut export_info = None;
        loop {
            let mut hdr = [0u8; nbd::OPTION_REPLY_HEADER_LEN];
            stream.read_exact(&mut hdr)?;
            let reply = nbd::OptionReplyHeader::decode(&hdr).map_err(wire)?;
            if reply.length as usize > nbd::MAX_STRING_LEN + 64 {
                return Err(protocol_error(format!(
                    "{uri}: option reply of {} bytes is implausibly long",
                    reply.length
                )));
            }
            let mut data = vec![0u8; reply.length as usize];
            stream.read_exact(&mut data)?;
            if reply.option != nbd::OPT_GO {
                return Err(protocol_error(format!(
                    "{uri}: reply to {} while waiting for NBD_OPT_GO",
                    nbd::option_name(reply.option)
                )));
            }
            if reply.is_error() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{uri}: server refused export `{export}` (reply type {:#x}): {}",
                        reply.reply_type,
                        String::from_utf8_lossy(&data)
                    ),
                ));
            }
            match reply.reply_type {
                nbd::REP_INFO => {
                    if let nbd::InfoReply::Export {
                        size,
                        transmission_flags,
                    } = nbd::InfoReply::decode(&data).map_err(wire)?
                    {
                        export_info = Some((size, transmission_flags));
                    }
                }
                nbd::REP_ACK => break,
                other => {
                    return Err(protocol_error(format!(
                        "{uri}: unexpected option reply type {other:#x} to NBD_OPT_GO"
                    )))
                }
            }
        }
        let (size, transmission_flags) = export_info.ok_or_else(|| {
            protocol_error(format!(
                "{uri}: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"
            ))
        })?;
        if size < STATEFILE_SIZE {
            tracing::warn!(%uri, size, "export is smaller than the 266240-byte statefile");
        }
        Ok(NbdClient {
            uri,
            stream,
            size,
            transmission_flags,
            next_handle: 1,
            broken: None,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn transmission_flags(&self) -> u16 {
        self.transmission_flags
    }

    /// Sends one request and reads its simple reply; `read_into` receives the
    /// data of a successful read.
    fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        payload: &[u8],
        read_into: Option<&mut [u8]>,
    ) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{}: connection unusable after: {why}", self.uri),
            ));
        }
        let result = self.exchange(command, flags, offset, payload, read_into);
        if let Err(e) = &result {
            // A server error reply keeps framing; anything else loses it.
            if e.raw_os_error().is_none() {
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    fn exchange(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        payload: &[u8],
        read_into: Option<&mut [u8]>,
    ) -> io::Result<()> {
        let length = read_into.as_ref().map_or(payload.len(), |b| b.len());
        let handle = self.next_handle;
        self.next_handle += 1;
        let header = nbd::RequestHeader {
            flags,
            command,
            handle,
            offset,
            length: length as u32,
        };
        let mut msg = Vec::with_capacity(nbd::REQUEST_HEADER_LEN + payload.len());
        msg.extend_from_slice(&header.encode());
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)?;
        self.stream.flush()?;
        let mut hdr = [0u8; nbd::SIMPLE_REPLY_HEADER_LEN];
        self.stream.read_exact(&mut hdr)?;
        let reply = nbd::SimpleReplyHeader::decode(&hdr)
            .map_err(|e| protocol_error(format!("{}: {e}", self.uri)))?;
        if reply.handle != handle {
            return Err(protocol_error(format!(
                "{}: reply for handle {} while waiting for {handle}",
                self.uri, reply.handle
            )));
        }
        if reply.error != 0 {
            tracing::debug!(uri = %self.uri, error = nbd::error_name(reply.error), offset, length, "NBD error reply");
            return Err(io::Error::from_raw_os_error(reply.error as i32));
        }
        if let Some(buf) = read_into {
            self.stream.read_exact(buf)?;
        }
        Ok(())
    }
}

impl StatefileTarget for NbdClient {
    fn read_at(&mut self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        self.request(nbd::CMD_READ, 0, offset, &[], Some(buf))
    }

    fn write_at(&mut self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        if self.transmission_flags & nbd::FLAG_READ_ONLY != 0 {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        // What the kernel does for an O_SYNC write: FUA if offered, else a
        // separate flush if offered, else nothing more.
        if self.transmission_flags & nbd::FLAG_SEND_FUA != 0 {
            self.request(nbd::CMD_WRITE, nbd::CMD_FLAG_FUA, offset, buf, None)
        } else {
            self.request(nbd::CMD_WRITE, 0, offset, buf, None)?;
            if self.transmission_flags & nbd::FLAG_SEND_FLUSH != 0 {
                self.request(nbd::CMD_FLUSH, 0, 0, &[], None)?;
            }
            Ok(())
        }
    }

    fn describe(&self) -> String {
        self.uri.clone()
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.broken.is_none() {
            let disc = nbd::RequestHeader {
                flags: 0,
                command: nbd::CMD_DISC,
                handle: self.next_handle,
                offset: 0,
                length: 0,
            };
            let _ = self.stream.write_all(&disc.encode());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn parses_uris() {
        let u: NbdUri = "nbd+unix:///statefile?socket=/run/sf.socket"
            .parse()
            .unwrap();
        assert_eq!(u.address, NbdAddress::Unix("/run/sf.socket".into()));
        assert_eq!(u.export, "statefile");
        assert_eq!(u.to_string(), "nbd+unix:///statefile?socket=/run/sf.socket");

        let u: NbdUri = "nbd://127.0.0.2:10810/xcp%2Dsf".parse().unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "127.0.0.2".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "xcp-sf");

        let u: NbdUri = "nbd://[::1]/".parse().unwrap();
        assert_eq!(
            u.address,
            NbdAddress::Tcp {
                host: "::1".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "");

        for bad in [
            "nbd+unix:///x",
            "nbd:///x",
            "http://h/x",
            "nbd://h:port/x",
            "nbd+unix://h/x?socket=/s",
        ] {
            assert!(bad.parse::<NbdUri>().is_err(), "{bad}");
        }
    }

    type TestServer = (
        tempfile::TempDir,
        PathBuf,
        Arc<Mutex<Vec<u8>>>,
        Arc<Mutex<Vec<(u16, u16)>>>,
        std::thread::JoinHandle<()>,
    );

    /// A minimal in-test NBD server over a socketpair-like Unix socket, written
    /// with the same wire crate, so the client is exercised end to end. Real
    /// peers (nbdkit, our nbd-http-server) are exercised in tests/.
    fn serve_once(
        listener: UnixListener,
        disk: Arc<Mutex<Vec<u8>>>,
        flags: u16,
        seen: Arc<Mutex<Vec<(u16, u16)>>>,
    ) {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&nbd::encode_server_greeting(
            nbd::FLAG_FIXED_NEWSTYLE | nbd::FLAG_NO_ZEROES,
        ))
        .unwrap();
        let mut cf = [0u8; 4];
        s.read_exact(&mut cf).unwrap();
        assert_eq!(nbd::decode_client_flags(&cf).unwrap(), 3);
        let mut oh = [0u8; nbd::OPTION_REQUEST_HEADER_LEN];
        s.read_exact(&mut oh).unwrap();
        let opt = nbd::OptionRequestHeader::decode(&oh).unwrap();
        assert_eq!(opt.option, nbd::OPT_GO);
        let mut data = vec![0u8; opt.length as usize];
        s.read_exact(&mut data).unwrap();
        let req = nbd::InfoRequest::decode(&data).unwrap();
        if req.name != b"sf" {
            s.write_all(&nbd::encode_option_reply(
                nbd::OPT_GO,
                nbd::REP_ERR_UNKNOWN,
                b"no such export",
            ))
            .unwrap();
            return;
        }
        let size = disk.lock().unwrap().len() as u64;
        let info = nbd::InfoReply::Export {
            size,
            transmission_flags: flags,
        };
        s.write_all(&nbd::encode_option_reply(
            nbd::OPT_GO,
            nbd::REP_INFO,
            &info.encode(),
        ))
        .unwrap();
        s.write_all(&nbd::encode_option_reply(nbd::OPT_GO, nbd::REP_ACK, b""))
            .unwrap();
        loop {
            let mut rh = [0u8; nbd::REQUEST_HEADER_LEN];
            if s.read_exact(&mut rh).is_err() {
                return;
            }
            let r = nbd::RequestHeader::decode(&rh).unwrap();
            seen.lock().unwrap().push((r.command, r.flags));
            let range = r.offset as usize..r.offset as usize + r.length as usize;
            let reply = |error| {
                nbd::SimpleReplyHeader {
                    error,
                    handle: r.handle,
                }
                .encode()
            };
            match r.command {
                nbd::CMD_READ => {
                    let d = disk.lock().unwrap();
                    match d.get(range) {
                        Some(bytes) => {
                            s.write_all(&reply(0)).unwrap();
                            s.write_all(bytes).unwrap();
                        }
                        None => s.write_all(&reply(nbd::EINVAL)).unwrap(),
                    }
                }
                nbd::CMD_WRITE => {
                    let mut payload = vec![0u8; r.length as usize];
                    s.read_exact(&mut payload).unwrap();
                    disk.lock().unwrap()[range].copy_from_slice(&payload);
                    s.write_all(&reply(0)).unwrap();
                }
                nbd::CMD_FLUSH => s.write_all(&reply(0)).unwrap(),
                nbd::CMD_DISC => return,
                _ => s.write_all(&reply(nbd::EINVAL)).unwrap(),
            }
        }
    }

    fn start(flags: u16) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let disk = Arc::new(Mutex::new(vec![0u8; STATEFILE_SIZE as usize]));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (d, s) = (disk.clone(), seen.clone());
        let h = std::thread::spawn(move || serve_once(listener, d, flags, s));
        (dir, sock, disk, seen, h)
    }

    #[test]
    fn reads_and_writes_with_fua() {
        let flags = nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FUA | nbd::FLAG_SEND_FLUSH;
        let (_dir, sock, disk, seen, server) = start(flags);
        let uri: NbdUri = format!("nbd+unix:///sf?socket={}", sock.display())
            .parse()
            .unwrap();
        let mut c = NbdClient::connect(&uri).unwrap();
        assert_eq!(c.size(), STATEFILE_SIZE);
        let mut w = AlignedBuf::zeroed(1024);
        w[..4].copy_from_slice(b"tsoh");
        c.write_at(&w, 4096).unwrap();
        assert_eq!(&disk.lock().unwrap()[4096..4100], b"tsoh");
        let mut r = AlignedBuf::zeroed(1024);
        c.read_at(&mut r, 4096).unwrap();
        assert_eq!(&r[..4], b"tsoh");
        // Past the end: the server's EINVAL comes back as an errno, and the
        // connection stays usable.
        let e = c.read_at(&mut r, STATEFILE_SIZE).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        c.read_at(&mut r, 0).unwrap();
        drop(c);
        server.join().unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], (nbd::CMD_WRITE, nbd::CMD_FLAG_FUA));
        assert_eq!(seen.last().unwrap().0, nbd::CMD_DISC);
    }

    #[test]
    fn flush_when_no_fua() {
        let (_dir, sock, _disk, seen, server) = start(nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH);
        let uri: NbdUri = format!("nbd+unix:///sf?socket={}", sock.display())
            .parse()
            .unwrap();
        let mut c = NbdClient::connect(&uri).unwrap();
        c.write_at(&AlignedBuf::zeroed(512), 0).unwrap();
        drop(c);
        server.join().unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(&seen[..2], &[(nbd::CMD_WRITE, 0), (nbd::CMD_FLUSH, 0)]);
    }

    #[test]
    fn unknown_export_is_a_clear_error() {
        let (_dir, sock, _disk, _seen, server) = start(nbd::FLAG_HAS_FLAGS);
        let uri: NbdUri = format!("nbd+unix:///nope?socket={}", sock.display())
            .parse()
            .unwrap();
        let e = NbdClient::connect(&uri).err().unwrap();
        assert!(e.to_string().contains("refused export `nope`"), "{e}");
        assert!(e.to_string().contains("no such export"), "{e}");
        server.join().unwrap();
    }
}
