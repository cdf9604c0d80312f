//! The operator's view of a volume's http-disk-servers: every URL's
//! `GET /v1/status`, asked in parallel with short timeouts, and the one
//! question that matters: does exactly one of them serve?

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartbeat_wire::{Role, ServerStatus, STATUS_PATH};
use serde::Serialize;

/// How long one status request may take, connect and answer together.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{url}: not an http://HOST:PORT URL")]
    BadUrl { url: String },
    #[error("{url}: unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: answered `{status_line}` to GET {STATUS_PATH} (not an http-disk-server, or an old one)")]
    HttpStatus { url: String, status_line: String },
    #[error("{url}: malformed status answer: {detail}")]
    Malformed { url: String, detail: String },
}

/// One server as seen now.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub url: String,
    /// The status document, when the server answered.
    pub status: Option<ServerStatus>,
    /// Why there is no status.
    pub error: Option<String>,
}

impl ServerView {
    pub fn role(&self) -> Option<Role> {
        self.status.as_ref().map(|s| s.role)
    }

    pub fn serves(&self) -> bool {
        self.role() == Some(Role::Serving)
    }

    /// The port of the URL, for short displays.
    pub fn port(&self) -> Option<u16> {
        authority(&self.url)
            .ok()
            .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
            .and_then(|p| p.parse().ok())
    }
}

fn authority(url: &str) -> Result<&str, StatusError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| StatusError::BadUrl { url: url.into() })?;
    let a = rest.split('/').next().unwrap_or("");
    if a.is_empty() || !a.contains(':') {
        return Err(StatusError::BadUrl { url: url.into() });
    }
    Ok(a)
}

/// `GET /v1/status` from one server within `timeout`.
pub fn fetch_status(url: &str, timeout: Duration) -> Result<ServerStatus, StatusError> {
    let a = authority(url)?;
    let unreachable = |source| StatusError::Unreachable {
        url: url.into(),
        source,
    };
    let addr = a
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| StatusError::BadUrl { url: url.into() })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET {STATUS_PATH} HTTP/1.1\r\nHost: {a}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(unreachable)?;
    parse_status_response(url, &response)
}

/// Splits an HTTP/1.1 answer into status line and body (plain or chunked)
/// and decodes the JSON.
fn parse_status_response(url: &str, response: &[u8]) -> Result<ServerStatus, StatusError> {
    let malformed = |detail: String| StatusError::Malformed {
        url: url.into(),
        detail,
    };
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("").to_owned();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(StatusError::HttpStatus {
            url: url.into(),
            status_line,
        });
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| malformed("bad chunked body".into()))?
    } else {
        body.to_vec()
    };
    serde_json::from_slice(&body).map_err(|e| malformed(format!("{e}")))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Every URL's status, asked in parallel; the answer keeps the URLs' order.
pub fn poll_servers(urls: &[String], timeout: Duration) -> Vec<ServerView> {
    std::thread::scope(|s| {
        let handles: Vec<_> = urls
            .iter()
            .map(|u| s.spawn(move || fetch_status(u, timeout)))
            .collect();
        urls.iter()
            .zip(handles)
            .map(|(url, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(StatusError::Malformed {
                        url: url.clone(),
                        detail: "status thread panicked".into(),
                    })
                });
                match r {
                    Ok(status) => ServerView {
                        url: url.clone(),
                        status: Some(status),
                        error: None,
                    },
                    Err(e) => ServerView {
                        url: url.clone(),
                        status: None,
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect()
    })
}

/// Who serves, judged over all servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ServingState {
    One { url: String, epoch: u64 },
    None,
    Several { urls: Vec<String> },
}

pub fn serving_state(views: &[ServerView]) -> ServingState {
    let serving: Vec<&ServerView> = views.iter().filter(|v| v.serves()).collect();
    match serving.as_slice() {
        [one] => ServingState::One {
            url: one.url.clone(),
            epoch: one.status.as_ref().map_or(0, |s| s.epoch),
        },
        [] => ServingState::None,
        many => ServingState::Several {
            urls: many.iter().map(|v| v.url.clone()).collect(),
        },
    }
}

impl std::fmt::Display for ServingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingState::One { url, epoch } => write!(f, "{url} serves (epoch {epoch})"),
            ServingState::None => f.write_str(
                "NO server serves: the volume is unavailable (check the servers' logs and standby reasons)",
            ),
            ServingState::Several { urls } => write!(
                f,
                "SEVERAL servers serve at once: {} (split brain: stop all but one)",
                urls.join(", ")
            ),
        }
    }
}

/// The whole answer of `xha-shim status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub servers: Vec<ServerView>,
    pub serving: ServingState,
}

impl StatusReport {
    pub fn poll(urls: &[String], timeout: Duration) -> Self {
        let servers = poll_servers(urls, timeout);
        let serving = serving_state(&servers);
        StatusReport { servers, serving }
    }

    pub fn exactly_one_serves(&self) -> bool {
        matches!(self.serving, ServingState::One { .. })
    }

    /// One row per server, then the verdict.
    pub fn to_table(&self, now: SystemTime) -> String {
        use std::fmt::Write;
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let width = self
            .servers
            .iter()
            .map(|s| s.url.len())
            .max()
            .unwrap_or(3)
            .max(3);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:<11} {:>5} {:>10} {:>9} {:>11} {:>6}  standby reason",
            "URL", "role", "epoch", "requests", "p99 ms", "role change", "errors"
        );
        for s in &self.servers {
            match &s.status {
                Some(st) => {
                    let c = &st.counters;
                    let _ = writeln!(
                        out,
                        "{:<width$}  {:<11} {:>5} {:>10} {:>9} {:>11} {:>6}  {}",
                        s.url,
                        st.role.as_str(),
                        st.epoch,
                        c.reads + c.writes,
                        st.latency_p99_us
                            .map_or("-".into(), |us| format!("{:.2}", us as f64 / 1000.0)),
                        st.last_role_change_unix_ms
                            .map_or("never".into(), |t| format!(
                                "{} ago",
                                age(now_ms.saturating_sub(t))
                            )),
                        c.io_errors + c.rejected,
                        st.standby_reason.as_deref().unwrap_or("-"),
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<width$}  {:<11} {:>5} {:>10} {:>9} {:>11} {:>6}  {}",
                        s.url,
                        "UNREACHABLE",
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        s.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        let _ = writeln!(out, "{}", self.serving);
        out
    }
}

/// `42s`, `3m05s`, `2h10m`, `4d03h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"version":"0.1.0","device":"/d","size":4194304,"role":"standby","epoch":3,"arbiter":"file","last_role_change_unix_ms":1000,"standby_reason":"lock held by another process","serving_url":"http://127.0.0.1:2","counters":{"reads":5,"writes":2,"bytes_read":0,"bytes_written":0,"rejected":0,"io_errors":1,"refused_standby":7}}"#;

    #[test]
    fn plain_and_chunked_answers() {
        let plain = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let s = parse_status_response("u", plain.as_bytes()).unwrap();
        assert_eq!((s.role, s.epoch), (Role::Standby, 3));
        let (a, b) = BODY.split_at(10);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};x=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        let s = parse_status_response("u", chunked.as_bytes()).unwrap();
        assert_eq!(s.counters.refused_standby, 7);
    }

    #[test]
    fn refusals_name_the_url() {
        let e = parse_status_response("http://h:1", b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("http://h:1"), "{e}");
        assert!(e.to_string().contains("404"), "{e}");
        assert!(matches!(
            fetch_status("h:1", STATUS_TIMEOUT),
            Err(StatusError::BadUrl { .. })
        ));
    }

    fn view(url: &str, role: Option<Role>) -> ServerView {
        let mut st: ServerStatus = serde_json::from_str(BODY).unwrap();
        ServerView {
            url: url.into(),
            status: role.map(|r| {
                st.role = r;
                st
            }),
            error: role.is_none().then(|| "refused".into()),
        }
    }

    #[test]
    fn judging_who_serves() {
        let one = [
            view("a", Some(Role::Standby)),
            view("b", Some(Role::Serving)),
            view("c", None),
        ];
        assert_eq!(
            serving_state(&one),
            ServingState::One {
                url: "b".into(),
                epoch: 3
            }
        );
        assert_eq!(serving_state(&one[..1]), ServingState::None);
        let two = [
            view("a", Some(Role::Serving)),
            view("b", Some(Role::Serving)),
        ];
        let s = serving_state(&two);
        assert!(s.to_string().contains("a, b"), "{s}");
        let report = StatusReport {
            serving: serving_state(&one),
            servers: one.to_vec(),
        };
        let table = report.to_table(UNIX_EPOCH + Duration::from_secs(61));
        assert!(table.contains("UNREACHABLE"), "{table}");
        assert!(table.contains("1m00s ago"), "{table}");
        assert!(table.contains("lock held by another process"), "{table}");
        assert!(table.contains("b serves (epoch 3)"), "{table}");
    }

    #[test]
    fn ages() {
        assert_eq!(age(4_250), "4.2s");
        assert_eq!(age(185_000), "3m05s");
        assert_eq!(age(7_800_000), "2h10m");
        assert_eq!(age(4 * 86_400_000 + 3 * 3_600_000), "4d03h");
    }
}
