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
/// Longest wait between two attempts to reach a peer that is not there.
const RECONNECT_MAX_MS: i32 = 250;
const ZMTP_HEARTBEAT_TIMEOUT_MS: i32 = 5000;

fn common_options(socket: &zmq::Socket, max_payload: u64) -> zmq::Result<()> {
    socket.set_linger(LINGER_MS)?;
    socket.set_maxmsgsize(crate::protocol::max_message_bytes(max_payload))?;
    socket.set_heartbeat_ivl(ZMTP_HEARTBEAT_MS)?;
    socket.set_heartbeat_timeout(ZMTP_HEARTBEAT_TIMEOUT_MS)
}

/// Lifts the receive high-water mark of a bound role's ROUTER. With a finite one, a peer
/// that outruns the role has its connection's input stopped, and libzmq 4.3.4 then aborts
/// the whole process (`Assertion failed: !_io_error`, stream_engine_base.cpp:331) if that
/// connection errs while stopped and the role sends to the peer, as it does with every
/// welcome and heartbeat. Unbounded here is still bounded by the batch: workers send
/// results and credit only for tasks they were given, and each message is at most
/// `protocol::max_message_bytes` of the role's `--max-payload`.
pub fn never_stop_input(socket: &zmq::Socket) -> anyhow::Result<()> {
    socket
        .set_rcvhwm(0)
        .map_err(|e| anyhow!("cannot set the receive high-water mark: {e}"))
}

/// A socket bound to `endpoint`, with the given role name for error messages, guarded by
/// `gate` when the role has one (protected mode is checked by the caller's `Access`).
/// Returns the socket and the endpoint it actually bound (with the port filled in for
/// `:*` or `:0`).
pub fn bind(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    flag: &str,
    gate: Option<&crate::auth::Gate>,
    max_payload: u64,
) -> anyhow::Result<(zmq::Socket, String)> {
    bind_prepared(
        ctx,
        kind,
        role,
        endpoint,
        flag,
        max_payload,
        |socket| match gate {
            Some(gate) => gate.guard(socket, role),
            None => Ok(()),
        },
    )
}

/// [`bind`], with `prepare` run on the socket just before it binds (instead of a gate's
/// plain guard).
pub fn bind_prepared(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    flag: &str,
    max_payload: u64,
    prepare: impl FnOnce(&zmq::Socket) -> anyhow::Result<()>,
) -> anyhow::Result<(zmq::Socket, String)> {
    let socket = ctx
        .socket(kind)
        .with_context(|| format!("cannot create the {role} socket"))?;
    common_options(&socket, max_payload)?;
    check_endpoint(endpoint, flag, true)?;
    let (endpoint, ipv6) = bind_address(endpoint, flag)?;
    if ipv6 {
        socket
            .set_ipv6(true)
            .map_err(|e| anyhow!("cannot enable IPv6 on the {role} socket: {e}"))?;
    }
    prepare(&socket)?;
    // Zero-length ports mean "any free port"; libzmq spells that `*`.
    let endpoint = endpoint
        .strip_suffix(":0")
        .map_or_else(|| endpoint.clone(), |e| format!("{e}:*"));
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
    log::debug!("{role} socket listening on {bound}");
    crate::events::emit(&crate::events::Note::Listening {
        socket: role.to_owned(),
        endpoint: bound.clone(),
    });
    Ok((socket, bound))
}

/// The farm's tasks ROUTER, bound at `endpoint` (`--bind`) and guarded by `gate`: workers
/// send it greetings and credit only, never a payload, so it keeps the small message limit
/// whatever `--max-payload` is. Sending to a worker that has gone fails at once
/// (ROUTER_MANDATORY) instead of vanishing silently; a worker that reconnects (after a
/// network cut the old connection may linger until ZMTP heartbeats close it) takes its
/// name over at once (ROUTER_HANDOVER); input is never stopped (`never_stop_input`).
/// The ventilator's socket, and the coordinator's front's.
pub fn bind_tasks(
    ctx: &zmq::Context,
    endpoint: &str,
    max_payload: u64,
    gate: Option<&crate::auth::Gate>,
) -> anyhow::Result<(zmq::Socket, String)> {
    let (socket, bound) = bind_prepared(
        ctx,
        zmq::ROUTER,
        "tasks",
        endpoint,
        "--bind",
        max_payload,
        |socket| {
            socket.set_maxmsgsize(crate::protocol::CONTROL_MESSAGE_BYTES)?;
            match gate {
                Some(gate) => gate.guard(socket, "tasks"),
                None => Ok(()),
            }
        },
    )?;
    socket.set_router_mandatory(true)?;
    never_stop_input(&socket)?;
    socket.set_router_handover(true)?;
    Ok((socket, bound))
}

/// Who a connecting socket is: its routing id (if any), and the credentials it presents.
pub struct Caller<'a> {
    pub identity: Option<&'a [u8]>,
    pub access: &'a crate::auth::Access,
    /// The user id it authenticates as with a secret (`worker:NAME`, `ventilator`).
    pub user: &'a str,
    /// The caller's `--max-payload`: the largest message the socket takes is one payload
    /// and its envelope.
    pub max_payload: u64,
}

/// A socket connected to `endpoint`. Connecting succeeds before the peer exists (ZeroMQ
/// reconnects in the background), so errors here are only malformed endpoints.
pub fn connect(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    role: &str,
    endpoint: &str,
    flag: &str,
    caller: &Caller,
) -> anyhow::Result<zmq::Socket> {
    let socket = ctx
        .socket(kind)
        .with_context(|| format!("cannot create the {role} socket"))?;
    common_options(&socket, caller.max_payload)?;
    // Redial a restarted or late peer within a quarter second, as the Guide's workers do
    // (libzmq's default, 100 ms flat), backing off no further than that.
    socket.set_reconnect_ivl(100)?;
    socket.set_reconnect_ivl_max(RECONNECT_MAX_MS)?;
    if let Some(id) = caller.identity {
        socket.set_identity(id)?;
    }
    caller.access.present(&socket, caller.user)?;
    check_endpoint(endpoint, flag, false)?;
    warn_if_unresolved(endpoint, flag);
    if tcp_host(endpoint).is_some_and(|host| host.starts_with('[')) {
        // An IPv6 address: libzmq resolves only IPv4 without this.
        socket
            .set_ipv6(true)
            .map_err(|e| anyhow!("cannot enable IPv6 on the {role} socket: {e}"))?;
    }
    socket.connect(endpoint).map_err(|e| {
        anyhow!(
            "cannot connect {role} socket to {endpoint}: {e} (expected tcp://HOST:PORT in {flag})"
        )
    })?;
    Ok(socket)
}

/// A host name in a connecting endpoint that does not resolve: said once, at the start.
/// libzmq keeps retrying it in silence (a name may resolve later, as DNS comes up at
/// boot), and the role would only say it waits for its peer.
fn warn_if_unresolved(endpoint: &str, flag: &str) {
    use std::net::ToSocketAddrs;
    let Some(host) = tcp_host(endpoint) else {
        return;
    };
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return;
    }
    if let Err(e) = (host, 1).to_socket_addrs() {
        log::warn!(
            "{flag} {endpoint}: cannot resolve {host} ({e}); retrying until it resolves: is the \
             name right?"
        );
    }
}

/// Polls `items` for up to `timeout_ms`. A signal arriving mid-poll (EINTR, as Ctrl-C
/// does) is a normal wake-up, not an error: it returns with nothing ready, and the
/// caller's loop checks its `Shutdown` next.
pub fn poll(items: &mut [zmq::PollItem], timeout_ms: i64, what: &str) -> anyhow::Result<()> {
    match zmq::poll(items, timeout_ms) {
        Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
        Err(e) => Err(anyhow!("polling {what}: {e}")),
    }
}

/// One receive without waiting; `None` when nothing is there or a signal interrupted it.
pub fn recv_multipart_nowait(
    socket: &zmq::Socket,
    what: &str,
) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(frames) => Ok(Some(frames)),
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(None),
        Err(e) => Err(anyhow!("receiving on {what}: {e}")),
    }
}

/// One message off a socket, as every role's pump sees it: who sent it (the routing id on
/// a ROUTER, empty on a DEALER) and what it was, or why it was not one of ours.
pub struct Inbound {
    pub peer: Vec<u8>,
    /// The user id its connection authenticated as (with a secret; else empty).
    pub user: String,
    /// Where its connection comes from, read for greetings only (`Hello`, `Join`).
    pub address: Option<String>,
    pub message: Result<crate::protocol::Message, String>,
}

/// Reads the messages waiting on `socket` without blocking, at most [`ROUND`], decodes
/// each and hands it to `each`: the one receive/decode/reject loop every role's pump uses.
/// On a ROUTER a message is a routing id and one frame; on a DEALER one frame. Anything
/// else is handed on as an error naming what was wrong, for the role to count and log.
/// Messages past the bound wait on the socket (a poll still finds it readable): a flood
/// costs bounded memory, and the machine's tick still runs between rounds.
pub fn drain(
    socket: &zmq::Socket,
    router: bool,
    what: &str,
    max_payload: u64,
    mut each: impl FnMut(Inbound) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..ROUND {
        let mut frames: Vec<zmq::Message> = Vec::with_capacity(2);
        // Frames and bytes past the routing id, and the bounds the message's first frame
        // sets for its kind (`protocol::message_bounds`): frames past them are dropped as
        // they are read, and the message is rejected.
        let (mut count, mut bytes, mut bounds) = (0usize, 0u64, None);
        let mut over = false;
        loop {
            let mut frame = zmq::Message::new();
            match socket.recv(&mut frame, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR)
                    if frames.is_empty() && count == 0 =>
                {
                    return Ok(())
                }
                // The rest of a message already begun is there: parts arrive together.
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(anyhow!("receiving on {what}: {e}")),
            }
            let more = frame.get_more();
            let routing = router && frames.is_empty() && count == 0;
            if !routing {
                count += 1;
                bytes += frame.len() as u64;
                let (max_frames, max_bytes) = *bounds
                    .get_or_insert_with(|| crate::protocol::message_bounds(&frame, max_payload));
                over |= count > max_frames || bytes > max_bytes;
            }
            if !over || routing {
                frames.push(frame);
            } else if frames.len() > usize::from(router) {
                // Keep the routing id and the first frame (for the user id and the log);
                // drop what was gathered after it.
                frames.truncate(usize::from(router) + 1);
            }
            if !more {
                break;
            }
        }
        if over {
            let (peer, user) = envelope(&mut frames, router);
            let kind = frames
                .first()
                .and_then(|f| crate::protocol::Message::decode_kind_name(f))
                .unwrap_or("unknown");
            each(Inbound {
                peer,
                user,
                address: None,
                message: Err(format!(
                    "a {kind} message of {count} frames and {bytes} bytes, beyond its bound \
                     (dropped)"
                )),
            })?;
            continue;
        }
        let (peer, user) = envelope(&mut frames, router);
        let mut address = None;
        let message = match frames.split_first_mut() {
            Some((payload, rest)) => {
                // A results message may carry its outputs as frames after its own.
                let parts: Vec<&[u8]> = rest.iter().map(|f| &f[..]).collect();
                let message = crate::protocol::Message::decode_parts(payload, &parts, max_payload)
                    .map_err(|e| e.to_string());
                if let Ok(crate::protocol::Message::Hello(_) | crate::protocol::Message::Join(_)) =
                    &message
                {
                    address = payload.gets("Peer-Address").map(str::to_owned);
                }
                message
            }
            None => Err("an empty message".to_owned()),
        };
        each(Inbound {
            peer,
            user,
            address,
            message,
        })?;
    }
    Ok(())
}

/// Takes a received message's envelope off its frames: the routing id (on a ROUTER; empty
/// on a DEALER) and the user id its connection authenticated as (empty without a secret).
pub fn envelope(frames: &mut Vec<zmq::Message>, router: bool) -> (Vec<u8>, String) {
    let user = frames
        .last_mut()
        .and_then(|f| f.gets("User-Id").map(str::to_owned))
        .unwrap_or_default();
    let peer = if router && !frames.is_empty() {
        frames.remove(0).to_vec()
    } else {
        Vec::new()
    };
    (peer, user)
}

/// Most messages [`drain`] reads from one socket in one round of a pump.
pub const ROUND: usize = 4096;

/// Sends `payload`, waiting for room in the queue (as PUSH does when every peer is busy)
/// in polls of at most 100 ms, so a stop request is seen while it waits: the one way a
/// loop here sends with back-pressure and still never blocks.
pub fn send_patiently(
    socket: &zmq::Socket,
    payload: &[u8],
    shutdown: &crate::shutdown::Shutdown,
    what: &str,
) -> anyhow::Result<()> {
    loop {
        match socket.send(payload, zmq::DONTWAIT) {
            Ok(()) => return Ok(()),
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => {
                shutdown.check()?;
                let mut items = [socket.as_poll_item(zmq::POLLOUT)];
                poll(&mut items, 100, what)?;
            }
            Err(e) => return Err(anyhow!("{what}: {e}")),
        }
    }
}

/// What became of a message sent without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Sent,
    /// The peer is not connected (ROUTER_MANDATORY): it is gone.
    Gone,
    /// The peer's queue is full: try again later.
    Busy,
}

/// Sends `payload` to the peer `routing_id` on a ROUTER, never waiting.
pub fn send_to(socket: &zmq::Socket, routing_id: &[u8], payload: &[u8]) -> SendOutcome {
    outcome(
        socket.send_multipart([routing_id, payload], zmq::DONTWAIT),
        routing_id,
    )
}

/// What a send's result means for the peer it went to.
fn outcome(sent: zmq::Result<()>, routing_id: &[u8]) -> SendOutcome {
    match sent {
        Ok(()) => SendOutcome::Sent,
        Err(zmq::Error::EHOSTUNREACH) => SendOutcome::Gone,
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => SendOutcome::Busy,
        Err(e) => {
            log::warn!("sending to {}: {e}", peer_name(routing_id));
            SendOutcome::Busy
        }
    }
}

/// [`send_to`] for a message the caller gives up: handed to libzmq without a copy (a
/// task's input may be many megabytes).
pub fn send_owned_to(socket: &zmq::Socket, routing_id: &[u8], payload: Vec<u8>) -> SendOutcome {
    // The routing frame decides: once it is taken, the rest of the message is too.
    let first = socket.send(routing_id, zmq::SNDMORE | zmq::DONTWAIT);
    let sent = first.and_then(|()| socket.send(payload, zmq::DONTWAIT));
    outcome(sent, routing_id)
}

/// Checks an endpoint before anything binds or connects: `tcp://HOST:PORT` with a port in
/// 1..=65535 (or `*`/0 where `bind` allows an ephemeral one), `ipc://PATH` or `inproc://NAME`.
/// libzmq itself would wrap `:70000` to another port or take `:-1` as 65535.
pub fn check_endpoint(endpoint: &str, flag: &str, bind: bool) -> anyhow::Result<()> {
    let hint = if bind {
        "tcp://*:PORT or tcp://ADDRESS:PORT"
    } else {
        "tcp://HOST:PORT"
    };
    if endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://") {
        return Ok(());
    }
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        anyhow::bail!("{flag} {endpoint:?}: expected {hint}");
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        anyhow::bail!("{flag} {endpoint:?}: no port; expected {hint}");
    };
    if host.is_empty() {
        anyhow::bail!("{flag} {endpoint:?}: no host; expected {hint}");
    }
    if bind && (port == "*" || port == "0") {
        return Ok(());
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => anyhow::bail!(
            "{flag} {endpoint:?}: port {port:?} is not a number from 1 to 65535; expected {hint}"
        ),
    }
}

/// The host of a `tcp://HOST:PORT` endpoint (an IPv6 address keeps its brackets).
fn tcp_host(endpoint: &str) -> Option<&str> {
    let (host, _port) = endpoint.strip_prefix("tcp://")?.rsplit_once(':')?;
    Some(host)
}

/// What a checked bind endpoint becomes for libzmq, and whether its address is IPv6 (the
/// socket then needs ZMQ_IPV6, without which libzmq takes only IPv4). libzmq binds
/// addresses and interface names, not host names (`localhost` fails with "No such
/// device"): a name is resolved here to an address of this machine, IPv4 first, since a
/// connecting socket resolves names to IPv4 as well.
fn bind_address(endpoint: &str, flag: &str) -> anyhow::Result<(String, bool)> {
    use std::net::{IpAddr, ToSocketAddrs};
    let unchanged = |ipv6| Ok((endpoint.to_owned(), ipv6));
    let Some(host) = tcp_host(endpoint) else {
        return unchanged(false);
    };
    // `:PORT`, as given (`:*` and `:0` included).
    let port = &endpoint[endpoint.rfind(':').unwrap_or(endpoint.len())..];
    if host == "*" || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return unchanged(false);
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if bracketed.is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()) {
        return unchanged(true);
    }
    if bracketed.is_some() || host.contains(':') {
        anyhow::bail!(
            "{flag} {endpoint:?}: {host} is not an IPv6 address; write one in brackets, e.g. tcp://[::1]:PORT"
        );
    }
    if is_interface(host) {
        return unchanged(false); // libzmq binds the interface's address itself
    }
    let addresses: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| {
            anyhow!(
                "{flag} {endpoint:?}: cannot resolve {host} ({e}); give an address of this                  machine, e.g. tcp://127.0.0.1:PORT, or tcp://*:PORT for all of them"
            )
        })?
        .map(|a| a.ip())
        .collect();
    let chosen = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .ok_or_else(|| anyhow!("{flag} {endpoint:?}: {host} resolves to no address"))?;
    Ok(match chosen {
        IpAddr::V4(a) => (format!("tcp://{a}{port}"), false),
        IpAddr::V6(a) => (format!("tcp://[{a}]{port}"), true),
    })
}

/// Whether `name` is one of this machine's network interfaces (`eth0`, `lo`).
fn is_interface(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

pub use conquer_core::text::peer_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked_before_libzmq_wraps_them() {
        assert!(check_endpoint("tcp://127.0.0.1:5557", "--bind", true).is_ok());
        assert!(check_endpoint("tcp://*:0", "--bind", true).is_ok());
        assert!(check_endpoint("tcp://*:*", "--bind", true).is_ok());
        assert!(check_endpoint("tcp://box-a:5558", "--sink", false).is_ok());
        for bad in [
            "tcp://127.0.0.1:70000",
            "tcp://*:-1",
            "tcp://host",
            "udp://x:1",
            "tcp://:5",
            "tcp://h:0",
        ] {
            let e = check_endpoint(bad, "--sink", false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--sink"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_names_are_resolved_before_binding_and_ipv6_is_switched_on() {
        let at = |e: &str| bind_address(e, "--bind").unwrap();
        assert_eq!(
            at("tcp://localhost:5557"),
            ("tcp://127.0.0.1:5557".into(), false)
        );
        assert_eq!(at("tcp://localhost:0"), ("tcp://127.0.0.1:0".into(), false));
        assert_eq!(at("tcp://[::1]:5557"), ("tcp://[::1]:5557".into(), true));
        assert_eq!(at("tcp://*:5557"), ("tcp://*:5557".into(), false));
        assert_eq!(at("tcp://10.0.0.1:*"), ("tcp://10.0.0.1:*".into(), false));
        assert_eq!(at("tcp://lo:5557"), ("tcp://lo:5557".into(), false));
        assert_eq!(at("ipc:///tmp/x"), ("ipc:///tmp/x".into(), false));
        let e = bind_address("tcp://[nonsense]:1", "--bind").unwrap_err();
        assert!(e.to_string().contains("brackets"), "{e}");
        let e = bind_address("tcp://no-such-host.invalid:1", "--bind").unwrap_err();
        assert!(e.to_string().contains("cannot resolve"), "{e}");
    }

    #[test]
    fn a_socket_bound_by_name_or_on_ipv6_loopback_is_reached() {
        let ctx = zmq::Context::new();
        let access = crate::auth::Access::default();
        let caller = Caller {
            identity: None,
            access: &access,
            user: "",
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
        };
        for endpoint in ["tcp://localhost:0", "tcp://[::1]:0"] {
            let (server, bound) = bind(
                &ctx,
                zmq::ROUTER,
                "test",
                endpoint,
                "--bind",
                None,
                crate::protocol::DEFAULT_MAX_PAYLOAD,
            )
            .unwrap();
            let client = connect(&ctx, zmq::DEALER, "test", &bound, "--sink", &caller).unwrap();
            client.send("ping", 0).unwrap();
            let mut items = [server.as_poll_item(zmq::POLLIN)];
            poll(&mut items, 10_000, "the test socket").unwrap();
            let frames = server.recv_multipart(zmq::DONTWAIT).unwrap();
            assert_eq!(
                frames.last().unwrap(),
                b"ping",
                "{endpoint} bound as {bound}"
            );
        }
    }
}
