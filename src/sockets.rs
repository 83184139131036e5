//! Socket plumbing shared by the roles: creating, binding and connecting with errors that
//! say what to do, and the options every socket gets (LINGER so that shutdown never hangs,
//! MAXMSGSIZE so a stranger cannot make us read a huge frame). No message layout here.

use anyhow::{anyhow, Context};

/// How long a closing socket may keep trying to deliver queued messages.
pub const LINGER_MS: i32 = 1000;
/// ZMTP-level PING interval and timeout: a connection whose peer vanished without closing it
/// (a cut cable, a frozen host) is dropped and, on the connecting side, redialled. The
/// application's own heartbeats decide when a worker is gone; this keeps TCP honest.
const ZMTP_HEARTBEAT_MS: i32 = 1000;
const ZMTP_HEARTBEAT_TIMEOUT_MS: i32 = 5000;

fn common_options(socket: &zmq::Socket) -> zmq::Result<()> {
    socket.set_linger(LINGER_MS)?;
    socket.set_maxmsgsize(crate::protocol::MAX_MESSAGE_BYTES)?;
    socket.set_heartbeat_ivl(ZMTP_HEARTBEAT_MS)?;
    socket.set_heartbeat_timeout(ZMTP_HEARTBEAT_TIMEOUT_MS)
}

/// A socket bound to `endpoint`, with the given role name for error messages. Returns the
/// socket and the endpoint it actually bound (with the port filled in for `:*` or `:0`).
pub fn bind(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    flag: &str,
) -> anyhow::Result<(zmq::Socket, String)> {
    let socket = ctx
        .socket(kind)
        .with_context(|| format!("cannot create the {role} socket"))?;
    common_options(&socket)?;
    // Zero-length ports mean "any free port"; libzmq spells that `*`.
    let endpoint = endpoint
        .strip_suffix(":0")
        .map_or_else(|| endpoint.to_owned(), |e| format!("{e}:*"));
    socket.bind(&endpoint).map_err(|e| {
        let hint = match e {
            zmq::Error::EADDRINUSE => format!(" (is another conquer running? pass {flag} with another port)"),
            zmq::Error::EINVAL | zmq::Error::EPROTONOSUPPORT => {
                format!(" (expected tcp://HOST:PORT or tcp://*:PORT in {flag})")
            }
            zmq::Error::EADDRNOTAVAIL | zmq::Error::ENODEV => {
                format!(" (no such local address; use tcp://*:PORT or an address of this machine in {flag})")
            }
            _ => String::new(),
        };
        anyhow!("cannot bind {role} socket {endpoint}: {e}{hint}")
    })?;
    let bound = socket
        .get_last_endpoint()?
        .map_err(|_| anyhow!("{role} socket bound to a non-UTF-8 endpoint"))?;
    log::info!("{role} socket listening on {bound}");
    Ok((socket, bound))
}

/// A socket connected to `endpoint`. Connecting succeeds before the peer exists (ZeroMQ
/// reconnects in the background), so errors here are only malformed endpoints.
pub fn connect(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    flag: &str,
    identity: Option<&[u8]>,
) -> anyhow::Result<zmq::Socket> {
    let socket = ctx
        .socket(kind)
        .with_context(|| format!("cannot create the {role} socket"))?;
    common_options(&socket)?;
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(2000)?;
    if let Some(id) = identity {
        socket.set_identity(id)?;
    }
    socket.connect(endpoint).map_err(|e| {
        anyhow!(
            "cannot connect {role} socket to {endpoint}: {e} (expected tcp://HOST:PORT in {flag})"
        )
    })?;
    Ok(socket)
}

/// A connectable form of a bound endpoint: `tcp://*:5557` and `tcp://0.0.0.0:5557` become
/// `tcp://127.0.0.1:5557`, for processes on the same machine.
pub fn local_form(bound: &str) -> String {
    bound
        .replace("tcp://*:", "tcp://127.0.0.1:")
        .replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
}

/// The peer's routing id as printable text for logs.
pub fn peer_name(routing_id: &[u8]) -> String {
    match std::str::from_utf8(routing_id) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => routing_id.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
