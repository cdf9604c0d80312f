//! What the NBD side is doing, as far as the upstream's answer polling must
//! know it.
//!
//! Polling for an upstream answer (`upstream::http1`, "Polling for the
//! answer") holds the current-thread runtime: while it polls, no other
//! request is read, dispatched or sent. So it is allowed only when nothing
//! else could want the runtime: at most one NBD client in transmission and
//! that client's one request outstanding. And it stops as soon as that
//! client's socket has more to read, because a queue-depth-8 client sends its
//! requests one after the other and the second must not wait for the first's
//! answer.
//!
//! One [`Activity`] is shared by the NBD connections (which register
//! themselves and their requests) and the upstream (which asks for a
//! [`PollPermit`]).

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct Activity {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Clients in transmission: an id and the socket their requests arrive
    /// on, when there is one (tests serve over in-memory pipes).
    clients: Vec<(u64, Option<RawFd>)>,
    next_client: u64,
    /// NBD requests read and not yet answered, over all clients.
    requests: usize,
}

impl Activity {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count a client in transmission, reading from `socket`, until the
    /// guard drops. Drop the guard before the socket closes (its number
    /// could be reused).
    pub fn client_entered(self: &Arc<Self>, socket: Option<RawFd>) -> ClientGuard {
        let mut state = self.state();
        let id = state.next_client;
        state.next_client += 1;
        state.clients.push((id, socket));
        ClientGuard {
            activity: self.clone(),
            id,
        }
    }

    /// Count one NBD request outstanding until the guard drops.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.state().requests += 1;
        RequestGuard {
            activity: self.clone(),
        }
    }

    /// Permission to hold the runtime while polling, for the one request
    /// outstanding (or for an exchange of the upstream's own, with no client
    /// at all); `None` when anything else might need it.
    pub fn poll_permit(&self) -> Option<PollPermit> {
        let state = self.state();
        match (state.clients.as_slice(), state.requests) {
            ([], 0 | 1) => Some(PollPermit { client: None }),
            ([(_, socket)], 0 | 1) => Some(PollPermit { client: *socket }),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn requests(&self) -> usize {
        self.state().requests
    }
}

/// A client in transmission; see [`Activity::client_entered`].
#[derive(Debug)]
pub struct ClientGuard {
    activity: Arc<Activity>,
    id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.activity
            .state()
            .clients
            .retain(|(id, _)| *id != self.id);
    }
}

/// An NBD request outstanding; see [`Activity::request_started`].
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.state().requests -= 1;
    }
}

/// Granted by [`Activity::poll_permit`]: poll, but stop when
/// [`Self::client_has_more`].
#[derive(Debug, Clone, Copy)]
pub struct PollPermit {
    client: Option<RawFd>,
}

impl PollPermit {
    /// The client's socket has bytes to read (its next request, or its
    /// close): the runtime is needed to read them.
    pub fn client_has_more(&self) -> bool {
        let Some(fd) = self.client else {
            return false;
        };
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid `pollfd` for the duration of the call; a zero
        // timeout never blocks. The fd belongs to a registered client, whose
        // guard drops before its socket closes.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        ready > 0 && pollfd.revents != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn polling_is_for_one_client_with_one_request() {
        let activity = Arc::new(Activity::default());
        assert!(
            activity.poll_permit().is_some(),
            "no client: the upstream's own exchanges"
        );
        let first = activity.client_entered(None);
        let one = activity.request_started();
        assert!(activity.poll_permit().is_some());
        let two = activity.request_started();
        assert!(
            activity.poll_permit().is_none(),
            "a second request is waiting"
        );
        drop(two);
        let second = activity.client_entered(None);
        assert!(activity.poll_permit().is_none(), "a second client");
        drop(first);
        assert!(activity.poll_permit().is_some());
        drop((one, second));
        assert_eq!(activity.requests(), 0);
    }

    #[test]
    fn the_permit_sees_the_clients_next_request() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let activity = Arc::new(Activity::default());
        let _client = activity.client_entered(Some(server.as_raw_fd()));
        let _request = activity.request_started();
        let permit = activity.poll_permit().unwrap();
        assert!(!permit.client_has_more());
        client.write_all(b"next request").unwrap();
        assert!(permit.client_has_more());
    }
}
