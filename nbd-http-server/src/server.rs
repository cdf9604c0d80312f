//! The tokio layer around the handshake and transmission state machines: one
//! task per connection reads requests and writes replies (in completion
//! order, as NBD allows). A lone request is served on that task; requests
//! that overlap in time get a task each.

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use heartbeat_wire::nbd::{self, SimpleReplyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::activity::Activity;
use crate::handshake::{CloseReason, ExportInfo, Handshake, Progress};
use crate::metrics::{metrics, NbdCommand};
use crate::transmission::{Command, Limits, RequestParser};
use crate::upstream::Upstream;

/// Settings shared by every connection.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub export: ExportInfo,
    pub limits: Limits,
    /// Per-request deadline (see `FailoverDeadline`).
    pub request_deadline: Duration,
    /// Requests in flight per connection before the reader waits.
    pub max_in_flight: usize,
    /// Shared with the upstream, which polls for answers only while this
    /// says nothing else needs the runtime.
    pub activity: Arc<Activity>,
}

struct Reply {
    handle: u64,
    error: u32,
    data: Vec<u8>,
}

/// One request being served; resolves to its reply.
type PendingReply = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Where requests come from: the connection's halves, its socket (`None` for
/// in-memory pipes) and a name for logs.
pub struct Client<R, W> {
    pub reader: R,
    pub writer: W,
    /// The socket `reader` reads, watched while the upstream polls for an
    /// answer (see [`Activity`]); it must stay open as long as `reader`.
    pub socket: Option<RawFd>,
    pub peer: String,
}

/// Serve one client connection until it disconnects or `shutdown` flips to
/// true; in-flight requests are always finished and answered first.
pub async fn serve_connection<R, W, U>(
    client: Client<R, W>,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    serve(client, config, upstream, shutdown, false).await
}

/// [`serve_connection`] for the kernel's NBD client (`crate::kernel`): no
/// handshake, transmission requests from the first byte, simple replies.
/// Returns after NBD_CMD_DISC, EOF or `shutdown`, having closed its end.
pub async fn serve_transmission_only<R, W, U>(
    client: Client<R, W>,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    serve(client, config, upstream, shutdown, true).await
}

async fn serve<R, W, U>(
    client: Client<R, W>,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    mut shutdown: watch::Receiver<bool>,
    skip_handshake: bool,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    let Client {
        mut reader,
        writer,
        socket,
        peer,
    } = client;
    let volume = config.export.name.clone();
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    let mut buf = vec![0u8; 256 * 1024];

    // Handshake.
    let mut hs = Handshake::new(config.export.clone());
    let leftover = loop {
        if skip_handshake {
            break Vec::new();
        }
        let out = hs.take_output();
        if !out.is_empty()
            && (writer.write_all(&out).await.is_err() || writer.flush().await.is_err())
        {
            return;
        }
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = shutdown.changed() => return,
        };
        match hs.receive(&buf[..n]) {
            Progress::NeedInput => {}
            Progress::Transmission { leftover } => {
                let out = hs.take_output();
                if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
                break leftover;
            }
            Progress::Close(reason) => {
                let out = hs.take_output();
                let _ = writer.write_all(&out).await;
                let _ = writer.flush().await;
                match reason {
                    CloseReason::ClientAborted => {
                        debug!(volume = %volume, %peer, "client aborted the handshake")
                    }
                    CloseReason::UnknownExport(name) => warn!(
                        volume = %volume, %peer,
                        "client asked for export {name:?} with NBD_OPT_EXPORT_NAME; this server exports {volume:?} (or the default export \"\"); closing as the NBD spec requires"
                    ),
                    other => {
                        warn!(volume = %volume, %peer, "closing connection during handshake: {other:?}")
                    }
                }
                return;
            }
        }
    };
    debug!(volume = %volume, %peer, "client entered transmission");
    // Declared after `reader` and `writer`, so dropped before they close
    // the socket it names.
    let _counted = config.activity.client_entered(socket);

    // Transmission. One request in flight (the statefile's pattern, and
    // every qd1 client's) is awaited right here on the connection task, so a
    // request costs no spawn and no channel hop. When a second request
    // arrives while one is pending, both move to tasks of their own (a boxed
    // future can move even after it was polled) and report back through the
    // channel, so requests still run concurrently.
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let mut inline: Option<PendingReply> = None;
    let mut spawned = 0usize;
    let mut reading = true;
    let mut parser = RequestParser::new(config.limits);
    parser.feed(&leftover);
    'conn: loop {
        let mut dirty = false;
        while reading && spawned + usize::from(inline.is_some()) < config.max_in_flight {
            let command = match parser.next_command() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(violation) => {
                    warn!(volume = %volume, %peer, "dropping NBD client: {violation}");
                    reading = false;
                    break;
                }
            };
            let deadline = Instant::now() + config.request_deadline;
            let pending: PendingReply = match command {
                Command::Disconnect => {
                    debug!(volume = %volume, %peer, "client sent NBD_CMD_DISC");
                    reading = false;
                    break;
                }
                Command::Reject {
                    handle,
                    error,
                    reason,
                } => {
                    info!(volume = %volume, %peer, "rejected request with {}: {reason}", nbd::error_name(error));
                    metrics().start(NbdCommand::Rejected).finish(false);
                    let reply = Reply {
                        handle,
                        error,
                        data: Vec::new(),
                    };
                    if write_reply(&mut writer, &reply).await.is_err() {
                        break 'conn;
                    }
                    dirty = true;
                    continue;
                }
                Command::Flush { handle } => {
                    // Every write is durable when acknowledged and nothing is
                    // cached here, so the writes this flush must cover (those
                    // already answered) are on stable storage now.
                    metrics().start(NbdCommand::Flush).finish(true);
                    let reply = Reply {
                        handle,
                        error: 0,
                        data: Vec::new(),
                    };
                    if write_reply(&mut writer, &reply).await.is_err() {
                        break 'conn;
                    }
                    dirty = true;
                    continue;
                }
                Command::Read {
                    handle,
                    offset,
                    length,
                } => {
                    let (upstream, volume) = (upstream.clone(), volume.clone());
                    let timer = metrics().start(NbdCommand::Read);
                    let outstanding = config.activity.request_started();
                    Box::pin(async move {
                        let result = upstream.read_at(offset, length, deadline).await;
                        drop(outstanding);
                        timer.finish(result.is_ok());
                        match result {
                            Ok(data) => Reply {
                                handle,
                                error: 0,
                                data,
                            },
                            Err(e) => {
                                warn!(volume = %volume, "read failed: {e}");
                                Reply {
                                    handle,
                                    error: e.nbd_error(),
                                    data: Vec::new(),
                                }
                            }
                        }
                    })
                }
                Command::Write {
                    handle,
                    offset,
                    data,
                    ..
                } => {
                    let (upstream, volume) = (upstream.clone(), volume.clone());
                    let timer = metrics().start(NbdCommand::Write);
                    let outstanding = config.activity.request_started();
                    Box::pin(async move {
                        let result = upstream.write_at(offset, &data, deadline).await;
                        drop(outstanding);
                        timer.finish(result.is_ok());
                        let error = match result {
                            Ok(()) => 0,
                            Err(e) => {
                                warn!(volume = %volume, "write failed: {e}");
                                e.nbd_error()
                            }
                        };
                        Reply {
                            handle,
                            error,
                            data: Vec::new(),
                        }
                    })
                }
            };
            if inline.is_none() && spawned == 0 {
                inline = Some(pending);
            } else {
                for p in inline.take().into_iter().chain(Some(pending)) {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(p.await);
                    });
                    spawned += 1;
                }
            }
        }
        if dirty && writer.flush().await.is_err() {
            break 'conn;
        }
        if !reading && inline.is_none() && spawned == 0 {
            break;
        }
        let can_read = reading && spawned + usize::from(inline.is_some()) < config.max_in_flight;
        tokio::select! {
            r = reader.read(&mut buf), if can_read => match r {
                Ok(0) => reading = false,
                Err(e) => {
                    debug!(volume = %volume, %peer, "read from client failed: {e}");
                    reading = false;
                }
                Ok(n) => parser.feed(&buf[..n]),
            },
            reply = async {
                match inline.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if inline.is_some() => {
                inline = None;
                if write_reply(&mut writer, &reply).await.is_err()
                    || writer.flush().await.is_err()
                {
                    break 'conn;
                }
            }
            Some(reply) = rx.recv(), if spawned > 0 => {
                spawned -= 1;
                if write_reply(&mut writer, &reply).await.is_err() {
                    break 'conn;
                }
                while let Ok(reply) = rx.try_recv() {
                    spawned -= 1;
                    if write_reply(&mut writer, &reply).await.is_err() {
                        break 'conn;
                    }
                }
                if writer.flush().await.is_err() {
                    break 'conn;
                }
            }
            _ = shutdown.changed(), if reading => {
                debug!(volume = %volume, %peer, "shutting down: finishing requests in flight");
                reading = false;
            }
        }
    }
    let _ = writer.shutdown().await;
    debug!(volume = %volume, %peer, "connection closed");
}

async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    reply: &Reply,
) -> std::io::Result<()> {
    let header = SimpleReplyHeader {
        error: reply.error,
        handle: reply.handle,
    };
    w.write_all(&header.encode()).await?;
    if reply.error == 0 && !reply.data.is_empty() {
        w.write_all(&reply.data).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::BlockSize;
    use crate::upstream::MemoryUpstream;
    use heartbeat_wire::nbd::{InfoRequest, OptionReplyHeader, RequestHeader};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn config(size: u64) -> Arc<ServeConfig> {
        Arc::new(ServeConfig {
            export: ExportInfo {
                name: "vol".into(),
                description: String::new(),
                size,
                transmission_flags: nbd::FLAG_HAS_FLAGS | nbd::FLAG_SEND_FLUSH | nbd::FLAG_SEND_FUA,
                block_size: BlockSize {
                    minimum: 512,
                    preferred: 4096,
                    maximum: 65536,
                },
            },
            limits: Limits {
                size,
                max_request: 65536,
                max_discard: 1 << 20,
            },
            request_deadline: Duration::from_secs(1),
            max_in_flight: 16,
            activity: Arc::default(),
        })
    }

    async fn connect(upstream: Arc<MemoryUpstream>) -> (DuplexStream, watch::Sender<bool>) {
        let (client, server) = duplex(1 << 20);
        let (r, w) = tokio::io::split(server);
        let (stop_tx, stop_rx) = watch::channel(false);
        let served = Client {
            reader: r,
            writer: w,
            socket: None,
            peer: "test".into(),
        };
        tokio::spawn(serve_connection(served, config(1 << 20), upstream, stop_rx));
        let mut client = client;
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).await.unwrap();
        client.write_all(&3u32.to_be_bytes()).await.unwrap();
        let data = InfoRequest {
            name: b"vol".to_vec(),
            requests: vec![],
        }
        .encode();
        client
            .write_all(&nbd::encode_option_request(nbd::OPT_GO, &data))
            .await
            .unwrap();
        loop {
            let mut h = [0u8; 20];
            client.read_exact(&mut h).await.unwrap();
            let h = OptionReplyHeader::decode(&h).unwrap();
            let mut d = vec![0u8; h.length as usize];
            client.read_exact(&mut d).await.unwrap();
            if h.reply_type == nbd::REP_ACK {
                break;
            }
        }
        (client, stop_tx)
    }

    async fn reply(c: &mut DuplexStream) -> SimpleReplyHeader {
        let mut h = [0u8; 16];
        c.read_exact(&mut h).await.unwrap();
        SimpleReplyHeader::decode(&h).unwrap()
    }

    fn request(command: u16, handle: u64, offset: u64, length: u32) -> [u8; 28] {
        RequestHeader {
            flags: 0,
            command,
            handle,
            offset,
            length,
        }
        .encode()
    }

    #[tokio::test]
    async fn write_then_read_back_and_errors_keep_connection() {
        let upstream = Arc::new(MemoryUpstream::new(1 << 20));
        let (mut c, _stop) = connect(upstream.clone()).await;
        c.write_all(&request(nbd::CMD_WRITE, 1, 512, 4))
            .await
            .unwrap();
        c.write_all(b"abcd").await.unwrap();
        assert_eq!(
            reply(&mut c).await,
            SimpleReplyHeader {
                error: 0,
                handle: 1
            }
        );
        c.write_all(&request(nbd::CMD_READ, 2, 1 << 20, 512))
            .await
            .unwrap();
        assert_eq!(reply(&mut c).await.error, nbd::EINVAL);
        c.write_all(&request(nbd::CMD_READ, 3, 512, 4))
            .await
            .unwrap();
        assert_eq!(
            reply(&mut c).await,
            SimpleReplyHeader {
                error: 0,
                handle: 3
            }
        );
        let mut data = [0u8; 4];
        c.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"abcd");
        c.write_all(&request(nbd::CMD_FLUSH, 4, 0, 0))
            .await
            .unwrap();
        assert_eq!(
            reply(&mut c).await,
            SimpleReplyHeader {
                error: 0,
                handle: 4
            }
        );
        c.write_all(&request(nbd::CMD_DISC, 5, 0, 0)).await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(&upstream.snapshot()[512..516], b"abcd");
    }

    #[tokio::test]
    async fn shutdown_finishes_and_closes() {
        let upstream = Arc::new(MemoryUpstream::new(1 << 20));
        let (mut c, stop) = connect(upstream).await;
        c.write_all(&request(nbd::CMD_READ, 9, 0, 512))
            .await
            .unwrap();
        assert_eq!(reply(&mut c).await.handle, 9);
        let mut data = [0u8; 512];
        c.read_exact(&mut data).await.unwrap();
        stop.send(true).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
