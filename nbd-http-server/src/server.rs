//! The tokio layer around the handshake and transmission state machines: one
//! task per connection reading requests, one task per request calling the
//! upstream, and one writer task per connection serialising replies (which go
//! out in completion order, as NBD allows).

use std::sync::Arc;
use std::time::Duration;

use heartbeat_wire::nbd::{self, SimpleReplyHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::handshake::{CloseReason, ExportInfo, Handshake, Progress};
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
}

struct Reply {
    handle: u64,
    error: u32,
    data: Vec<u8>,
}

/// Serve one client connection until it disconnects or `shutdown` flips to
/// true; in-flight requests are always finished and answered first.
pub async fn serve_connection<R, W, U>(
    reader: R,
    writer: W,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    shutdown: watch::Receiver<bool>,
    peer: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    serve(reader, writer, config, upstream, shutdown, peer, false).await
}

/// [`serve_connection`] for the kernel's NBD client (`crate::kernel`): no
/// handshake, transmission requests from the first byte, simple replies.
/// Returns after NBD_CMD_DISC, EOF or `shutdown`, having closed its end.
pub async fn serve_transmission_only<R, W, U>(
    reader: R,
    writer: W,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    shutdown: watch::Receiver<bool>,
    peer: String,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
    serve(reader, writer, config, upstream, shutdown, peer, true).await
}

async fn serve<R, W, U>(
    mut reader: R,
    writer: W,
    config: Arc<ServeConfig>,
    upstream: Arc<U>,
    mut shutdown: watch::Receiver<bool>,
    peer: String,
    skip_handshake: bool,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    U: Upstream,
{
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

    // Transmission.
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let writer_task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            if write_reply(&mut writer, &reply).await.is_err() {
                return;
            }
            while let Ok(reply) = rx.try_recv() {
                if write_reply(&mut writer, &reply).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });

    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    let mut parser = RequestParser::new(config.limits);
    parser.feed(&leftover);
    'read: loop {
        loop {
            let command = match parser.next_command() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(violation) => {
                    warn!(volume = %volume, %peer, "dropping NBD client: {violation}");
                    break 'read;
                }
            };
            let deadline = Instant::now() + config.request_deadline;
            match command {
                Command::Disconnect => {
                    debug!(volume = %volume, %peer, "client sent NBD_CMD_DISC");
                    break 'read;
                }
                Command::Reject {
                    handle,
                    error,
                    reason,
                } => {
                    info!(volume = %volume, %peer, "rejected request with {}: {reason}", nbd::error_name(error));
                    let _ = tx.send(Reply {
                        handle,
                        error,
                        data: Vec::new(),
                    });
                }
                Command::Flush { handle } => {
                    // Every write is durable when acknowledged and nothing is
                    // cached here, so the writes this flush must cover (those
                    // already answered) are on stable storage now.
                    let _ = tx.send(Reply {
                        handle,
                        error: 0,
                        data: Vec::new(),
                    });
                }
                Command::Read {
                    handle,
                    offset,
                    length,
                } => {
                    let permit = in_flight
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("never closed");
                    let (tx, upstream, volume) = (tx.clone(), upstream.clone(), volume.clone());
                    tokio::spawn(async move {
                        let reply = match upstream.read_at(offset, length, deadline).await {
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
                        };
                        let _ = tx.send(reply);
                        drop(permit);
                    });
                }
                Command::Write {
                    handle,
                    offset,
                    data,
                    ..
                } => {
                    let permit = in_flight
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("never closed");
                    let (tx, upstream, volume) = (tx.clone(), upstream.clone(), volume.clone());
                    tokio::spawn(async move {
                        let error = match upstream.write_at(offset, &data, deadline).await {
                            Ok(()) => 0,
                            Err(e) => {
                                warn!(volume = %volume, "write failed: {e}");
                                e.nbd_error()
                            }
                        };
                        let _ = tx.send(Reply {
                            handle,
                            error,
                            data: Vec::new(),
                        });
                        drop(permit);
                    });
                }
            }
        }
        let n = tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) => break 'read,
                Err(e) => {
                    debug!(volume = %volume, %peer, "read from client failed: {e}");
                    break 'read;
                }
                Ok(n) => n,
            },
            _ = shutdown.changed() => {
                debug!(volume = %volume, %peer, "shutting down: finishing requests in flight");
                break 'read;
            }
        };
        parser.feed(&buf[..n]);
    }
    // Writer ends once every in-flight request has answered.
    drop(tx);
    let _ = writer_task.await;
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
        })
    }

    async fn connect(upstream: Arc<MemoryUpstream>) -> (DuplexStream, watch::Sender<bool>) {
        let (client, server) = duplex(1 << 20);
        let (r, w) = tokio::io::split(server);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve_connection(
            r,
            w,
            config(1 << 20),
            upstream,
            stop_rx,
            "test".into(),
        ));
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
