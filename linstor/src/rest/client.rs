//! A blocking HTTP client for the LINSTOR controller's REST API v1.
//!
//! `ureq` (blocking, no async runtime, default features off: no TLS, no gzip)
//! because provisioning is a handful of sequential calls from a CLI; pulling a
//! runtime or hyper's client stack into it would buy nothing. Plain HTTP only
//! (the controller's default port 3370); HTTPS on 3371 is refused with a clear
//! message rather than silently downgraded.

use std::cell::Cell;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::retcode::{Explained, Severity};
use super::types::ApiCallRc;

/// LINSTOR's default REST port (plain HTTP).
pub const DEFAULT_PORT: u16 = 3370;

#[derive(Debug, thiserror::Error)]
pub enum LinstorError {
    #[error("LINSTOR controller address `{url}` is not usable: {reason}")]
    BadControllerUrl { url: String, reason: String },
    #[error(
        "cannot reach the LINSTOR controller at {urls}: {source}; check that \
         linstor-controller runs (on XCP-ng: on the host holding \
         xcp-persistent-database) and that TCP port 3370 is open"
    )]
    Unreachable { urls: String, source: ureq::Error },
    #[error("{method} {url}: HTTP {status} with a reply that is not LINSTOR JSON: {body}")]
    Http {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{method} {url}: cannot decode the reply ({source}): {body}")]
    Decode {
        method: &'static str,
        url: String,
        source: serde_json::Error,
        body: String,
    },
    #[error("{what} failed:\n{}", explain_all(.replies))]
    Api {
        what: String,
        replies: Vec<ApiCallRc>,
    },
}

fn explain_all(replies: &[ApiCallRc]) -> String {
    replies
        .iter()
        .filter(|r| r.rc().severity() >= Severity::Warning)
        .map(|r| Explained(r).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replies of a modifying call (`ApiCallRcList`, or one `ApiCallRc` on some 500s).
#[derive(Debug, Clone, Default)]
pub struct Replies {
    pub http_status: u16,
    pub entries: Vec<ApiCallRc>,
}

impl Replies {
    pub fn errors(&self) -> impl Iterator<Item = &ApiCallRc> {
        self.entries.iter().filter(|r| r.rc().is_error())
    }

    /// Whether one of the entries is the error `code` (bits 0-14).
    pub fn has_error_code(&self, code: u64) -> bool {
        self.errors().any(|r| r.rc().code() == code)
    }

    /// Warnings and infos, for the report.
    pub fn notes(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|r| matches!(r.rc().severity(), Severity::Warning | Severity::Info))
            .map(|r| Explained(r).to_string())
            .collect()
    }

    /// `Err` when LINSTOR reported an error (or a non-2xx status without one).
    pub fn into_result(self, what: &str) -> Result<Replies, LinstorError> {
        let failed_status = !(200..300).contains(&self.http_status);
        if self.errors().next().is_some() || failed_status {
            let mut replies = self.entries;
            if !replies.iter().any(|r| r.rc().is_error()) {
                replies.push(ApiCallRc {
                    ret_code: super::retcode::MASK_ERROR as i64,
                    message: format!("HTTP status {} without an error entry", self.http_status),
                    ..ApiCallRc::default()
                });
            }
            return Err(LinstorError::Api {
                what: what.to_string(),
                replies,
            });
        }
        Ok(self)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RcBody {
    List(Vec<ApiCallRc>),
    One(ApiCallRc),
}

/// One LINSTOR controller, or several (the first that answers is used, like
/// the `linstor --controllers a,b,c` client: on XCP-ng the controller moves
/// with the database volume).
pub struct Client {
    bases: Vec<String>,
    active: Cell<usize>,
    agent: ureq::Agent,
}

/// Normalise `host`, `host:port`, `http://host[:port]` (comma-separated list).
pub fn controller_bases(spec: &str) -> Result<Vec<String>, LinstorError> {
    let mut bases = Vec::new();
    for raw in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |reason: &str| LinstorError::BadControllerUrl {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        let rest = if let Some(rest) = raw.strip_prefix("http://") {
            rest
        } else if raw.starts_with("https://") {
            return Err(bad(
                "HTTPS is not supported by this client; use the plain HTTP port \
                 (http://<host>:3370), reachable from the hosts of the pool",
            ));
        } else if raw.contains("://") {
            return Err(bad("only http:// is supported"));
        } else {
            raw
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected http://<host>[:<port>] without a path"));
        }
        // A port is present if the authority ends in `:digits` (and, for IPv6, after `]`).
        let has_port = match authority.rfind(':') {
            Some(i) => {
                let tail = &authority[i + 1..];
                !tail.is_empty()
                    && tail.bytes().all(|b| b.is_ascii_digit())
                    && (!authority.starts_with('[') || authority[..i].ends_with(']'))
            }
            None => false,
        };
        if authority.starts_with('[') && !authority.contains(']') {
            return Err(bad("unterminated IPv6 literal"));
        }
        let bare_ipv6 = !authority.starts_with('[') && authority.matches(':').count() > 1;
        let authority = if bare_ipv6 {
            format!("[{authority}]:{DEFAULT_PORT}")
        } else if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{DEFAULT_PORT}")
        };
        bases.push(format!("http://{authority}"));
    }
    if bases.is_empty() {
        return Err(LinstorError::BadControllerUrl {
            url: spec.to_string(),
            reason: "no controller given".into(),
        });
    }
    Ok(bases)
}

/// Percent-encode one path segment or query value (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_connect_failure(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Io(_)
    ) || matches!(e, ureq::Error::Timeout(t) if matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve))
}

impl Client {
    /// `controllers`: see [`controller_bases`]. `timeout` bounds each call;
    /// spawn and autoplace wait for the satellites, so keep it generous.
    pub fn new(controllers: &str, timeout: Duration) -> Result<Self, LinstorError> {
        let bases = controller_bases(controllers)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .user_agent(concat!("xha-heartbeat-linstor/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Self {
            bases,
            active: Cell::new(0),
            agent,
        })
    }

    /// The controller base URL currently in use.
    pub fn base(&self) -> &str {
        &self.bases[self.active.get()]
    }

    /// Sends one request to the first controller that accepts a connection.
    fn exchange(
        &self,
        method: &'static str,
        path: &str,
        body: Option<String>,
    ) -> Result<(String, u16, String), LinstorError> {
        let n = self.bases.len();
        let mut last_err = None;
        for k in 0..n {
            let i = (self.active.get() + k) % n;
            let url = format!("{}{}", self.bases[i], path);
            tracing::debug!(%method, %url, body = body.as_deref().unwrap_or(""), "LINSTOR request");
            let result = match (&body, method) {
                (Some(b), "PUT") => self
                    .agent
                    .put(&url)
                    .content_type("application/json")
                    .send(b.as_str()),
                (Some(b), _) => self
                    .agent
                    .post(&url)
                    .content_type("application/json")
                    .send(b.as_str()),
                (None, _) => self
                    .agent
                    .get(&url)
                    .header("Accept", "application/json")
                    .call(),
            };
            match result {
                Ok(mut resp) => {
                    self.active.set(i);
                    let status = resp.status().as_u16();
                    let text = resp.body_mut().read_to_string().map_err(|source| {
                        LinstorError::Unreachable {
                            urls: url.clone(),
                            source,
                        }
                    })?;
                    return Ok((url, status, text));
                }
                Err(e) if is_connect_failure(&e) => last_err = Some(e),
                Err(source) => return Err(LinstorError::Unreachable { urls: url, source }),
            }
        }
        Err(LinstorError::Unreachable {
            urls: self.bases.join(", "),
            source: last_err.unwrap_or(ureq::Error::ConnectionFailed),
        })
    }

    /// `GET path` (with query), decoding a 2xx reply as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, LinstorError> {
        let (url, status, text) = self.exchange("GET", path, None)?;
        if !(200..300).contains(&status) {
            if let Ok(replies) = decode_replies(&text) {
                return Err(LinstorError::Api {
                    what: format!("GET {url}"),
                    replies,
                });
            }
            return Err(LinstorError::Http {
                method: "GET",
                url,
                status,
                body: snippet(&text),
            });
        }
        serde_json::from_str(&text).map_err(|source| LinstorError::Decode {
            method: "GET",
            url,
            source,
            body: snippet(&text),
        })
    }

    /// `POST path` with a JSON body; the replies are returned whatever the
    /// status, so callers can recognise FAIL_EXISTS before treating errors.
    pub fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Replies, LinstorError> {
        self.modify("POST", path, body)
    }

    /// `PUT path` with a JSON body (replies as for [`Client::post`]).
    pub fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<Replies, LinstorError> {
        self.modify("PUT", path, body)
    }

    fn modify<B: Serialize>(
        &self,
        method: &'static str,
        path: &str,
        body: &B,
    ) -> Result<Replies, LinstorError> {
        let json = serde_json::to_string(body).expect("request types always serialise");
        let (url, status, text) = self.exchange(method, path, Some(json))?;
        match decode_replies(&text) {
            Ok(entries) => Ok(Replies {
                http_status: status,
                entries,
            }),
            Err(_) if (200..300).contains(&status) && text.trim().is_empty() => Ok(Replies {
                http_status: status,
                entries: Vec::new(),
            }),
            Err(_) => Err(LinstorError::Http {
                method,
                url,
                status,
                body: snippet(&text),
            }),
        }
    }
}

fn decode_replies(text: &str) -> Result<Vec<ApiCallRc>, serde_json::Error> {
    Ok(match serde_json::from_str::<RcBody>(text)? {
        RcBody::List(l) => l,
        RcBody::One(r) => vec![r],
    })
}

fn snippet(text: &str) -> String {
    const MAX: usize = 500;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_forms() {
        assert_eq!(controller_bases("ctrl").unwrap(), ["http://ctrl:3370"]);
        assert_eq!(
            controller_bases("http://10.0.0.1:8080/, 10.0.0.2").unwrap(),
            ["http://10.0.0.1:8080", "http://10.0.0.2:3370"]
        );
        assert_eq!(
            controller_bases("fd00::1").unwrap(),
            ["http://[fd00::1]:3370"]
        );
        assert_eq!(
            controller_bases("[fd00::1]").unwrap(),
            ["http://[fd00::1]:3370"]
        );
        assert_eq!(
            controller_bases("http://[fd00::1]:99").unwrap(),
            ["http://[fd00::1]:99"]
        );
        assert!(controller_bases("https://ctrl:3371").is_err());
        assert!(controller_bases("http://ctrl/v1").is_err());
        assert!(controller_bases(" , ").is_err());
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(
            encode("xcp-persistent-ha_statefile.0~"),
            "xcp-persistent-ha_statefile.0~"
        );
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
