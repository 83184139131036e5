//! Who may connect: a shared secret checked with ZeroMQ's PLAIN mechanism, an address
//! allowlist, and protected mode. Every bound socket of a guarded role is watched by a
//! ZAP handler (RFC 27, `inproc://zeromq.zap.01`) that this module starts in the socket's
//! context before anything binds; connecting sockets present the secret. Refused
//! handshakes are counted from the bound socket's monitor and logged, rate-limited.
//!
//! PLAIN sends the secret in the clear: this decides who may take tasks and submit
//! results, not who may read them on the wire (README, "Security").

use crate::protocol::Message;
use anyhow::{anyhow, bail, Context};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Where libzmq sends authentication requests; one handler per context.
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The ZAP domain of every guarded socket.
const DOMAIN: &str = "conquer";
/// Shortest secret accepted, in bytes of the file: 32, so that even a hex secret carries
/// 128 bits (`conquer secret new` writes 64 hex digits, 256 bits).
const MIN_SECRET_BYTES: usize = 32;
/// Longest secret: hex-encoded, it must fit PLAIN's 255-byte password.
const MAX_SECRET_BYTES: usize = 127;
/// What `conquer secret new` writes: 256 random bits, as hex.
const NEW_SECRET_BYTES: usize = 32;
/// `ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH` in libzmq 4.3 (zmq.h): the peer speaks
/// another security mechanism, here PLAIN against NULL or the other way round.
const MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// Events every monitored socket reports: failed handshakes, and the end of monitoring
/// (the socket closed).
const WATCHED_EVENTS: i32 = zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32
    | zmq::SocketEvent::MONITOR_STOPPED as i32;

/// A shared secret, read from a file only its owner can read. Printing one shows where it
/// came from, never what it is.
#[derive(Clone)]
pub struct Secret {
    /// The secret as PLAIN's password: its bytes in lowercase hex.
    password: String,
    /// The file it was read from; empty for one made for a single run ([`Secret::fresh`]).
    path: PathBuf,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_fresh() {
            write!(f, "Secret(made for this run)")
        } else {
            write!(f, "Secret({})", self.path.display())
        }
    }
}

impl Secret {
    /// Reads the secret in `path`: the file's bytes, trailing whitespace dropped. A file
    /// that group or others may read or write, or that another user owns, is refused, as
    /// ssh refuses such a key. The checks and the read are on one open file.
    pub fn load(path: &Path) -> anyhow::Result<Secret> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let make = format!("make one with `conquer secret new {}`", path.display());
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the secret file {} ({make})", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        if !meta.is_file() {
            bail!("the secret file {} is not a file ({make})", path.display());
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the secret file {} has mode {mode:03o}: group or others may read or change it; \
                 restrict it with `chmod 600 {}` (or make a new one with `conquer secret new`)",
                path.display(),
                path.display()
            );
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            bail!(
                "the secret file {} belongs to user {}, not to this user ({me}): give it to the \
                 user each role runs as (`chown`), mode 0600",
                path.display(),
                meta.uid()
            );
        }
        let mut bytes = Vec::with_capacity(256);
        file.by_ref()
            .take(4096)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        let secret = bytes.trim_ascii_end();
        if secret.len() < MIN_SECRET_BYTES || secret.len() > MAX_SECRET_BYTES {
            bail!(
                "the secret file {} holds {} bytes; a secret is {MIN_SECRET_BYTES} to \
                 {MAX_SECRET_BYTES} bytes ({make})",
                path.display(),
                secret.len()
            );
        }
        Ok(Secret {
            password: hex(secret),
            path: path.to_owned(),
        })
    }

    /// A new random secret (256 bits from the operating system's generator) that lives in
    /// this process only: `conquer run` makes one for each run, so that its own workers
    /// authenticate and nobody else on the machine can join its loopback sockets.
    pub fn fresh() -> anyhow::Result<Secret> {
        use rand::TryRngCore;
        let mut bytes = [0u8; NEW_SECRET_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| anyhow!("the operating system's random generator failed: {e}"))?;
        Ok(Secret {
            password: hex(&hex(&bytes).into_bytes()),
            path: PathBuf::new(),
        })
    }

    /// Whether it was made for this run ([`Secret::fresh`]) rather than read from a file:
    /// nobody outside the process knows it.
    pub fn is_fresh(&self) -> bool {
        self.path.as_os_str().is_empty()
    }

    /// Writes a new secret to `path`: 256 bits from the operating system's generator, as
    /// hex, mode 0600. An existing file is kept unless `force`, which writes a new file
    /// beside it and renames it over (never writing through an existing file or link).
    pub fn create(path: &Path, force: bool) -> anyhow::Result<()> {
        use rand::TryRngCore;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if !force && std::fs::symlink_metadata(path).is_ok() {
            bail!(
                "{} exists; keep it, or pass --force to replace it (every role must then get the \
                 new one)",
                path.display()
            );
        }
        let mut bytes = [0u8; NEW_SECRET_BYTES];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| anyhow!("the operating system's random generator failed: {e}"))?;
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".new-{}", std::process::id()));
        let fresh = path.with_file_name(name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .and_then(|mut file| {
                writeln!(file, "{}", hex(&bytes))?;
                file.sync_all()
            })
            .and_then(|()| {
                if force {
                    std::fs::rename(&fresh, path)
                } else {
                    // Never over a file that appeared meanwhile.
                    std::fs::hard_link(&fresh, path).and_then(|()| std::fs::remove_file(&fresh))
                }
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&fresh);
            return Err(match e.kind() {
                std::io::ErrorKind::AlreadyExists => anyhow!(
                    "{} exists; keep it, or pass --force to replace it",
                    path.display()
                ),
                _ => anyhow!("cannot write {}: {e}", path.display()),
            });
        }
        Ok(())
    }

    /// The bearer token the live view asks for on a bind other machines can reach:
    /// HMAC-SHA256 of a fixed label under the secret, as hex. It lets a reader see the
    /// farm without being able to join it.
    pub fn token(&self) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.password.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"conquer live view");
        hex(&mac.finalize().into_bytes())
    }

    /// The token that lets its holder submit and cancel jobs on a coordinator (`conquer
    /// serve`): derived apart from the live view's, so the status token cannot submit; a
    /// worker presents the secret itself, never this.
    pub fn submit_token(&self) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.password.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"conquer submit");
        hex(&mac.finalize().into_bytes())
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time that does not depend on where `a` and `b` differ (their lengths are
/// not secret: every conquer secret's password has the same length as the file's).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Constant-time equality for text (bearer tokens), as the handler compares passwords.
pub fn same_text(a: &str, b: &str) -> bool {
    same(a.as_bytes(), b.as_bytes())
}

/// An address range for `--allow`: `10.0.0.0/8`, `192.168.1.7` (one host), `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("{text:?} is not an address range; expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")
        })?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "{text:?}: the prefix length must be a number from 0 to {bits}"
                    ))
                }
            },
        };
        let cidr = Cidr { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "{text:?} has bits set past its /{prefix}; did you mean {}/{prefix}?",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// `address` with the bits past this range's prefix cleared.
    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `address` lies in this range. An IPv4 address seen as IPv6
    /// (`::ffff:10.0.0.1`) is compared as IPv4.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }
}

/// Who may connect to a role's bound sockets, and what its connecting sockets present.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Peers must present this secret; connecting sockets present it.
    pub secret: Option<Secret>,
    /// Connections from outside these ranges are refused (empty: any address).
    pub allow: Vec<Cidr>,
    /// Bind a non-loopback address with neither of the above, knowingly.
    pub insecure: bool,
}

/// `--http`'s address checked for form (HOST:PORT): a malformed one is named as such,
/// before any check that would refuse it as exposed.
pub fn check_http_address(addr: &str) -> anyhow::Result<()> {
    crate::sockets::check_endpoint(&format!("tcp://{addr}"), "--http", true).map_err(|_| {
        anyhow::anyhow!("--http {addr:?}: expected HOST:PORT, such as 127.0.0.1:8080 or [::1]:8080")
    })
}

impl Access {
    /// Whether bound sockets check anything (and so need the ZAP handler).
    pub fn guarded(&self) -> bool {
        self.secret.is_some() || !self.allow.is_empty()
    }

    /// Protected mode: a socket bound where other machines can reach it needs a secret or
    /// an allowlist, or `--insecure`. Loopback, `ipc://` and `inproc://` binds need none.
    pub fn check_exposure(&self, endpoint: &str, flag: &str) -> anyhow::Result<()> {
        // A malformed endpoint is named as such, not refused as an exposed one.
        crate::sockets::check_endpoint(endpoint, flag, true)?;
        if self.guarded() || is_local(endpoint) {
            return Ok(());
        }
        if self.insecure {
            log::warn!(
                "{flag} {endpoint} is reachable from other machines and --insecure lets anyone who \
                 reaches it take tasks and submit results; prefer --secret-file or --allow"
            );
            return Ok(());
        }
        bail!(
            "refusing to bind {endpoint} ({flag}) without authentication: any machine that can \
             reach it could take tasks and submit forged results. Make a secret with `conquer \
             secret new FILE` and give every role --secret-file FILE, or admit only some addresses \
             with --allow CIDR, or bind a loopback address; --insecure accepts the risk"
        )
    }

    /// The live view's bearer token for `--http ADDR` (`HOST:PORT`): none on loopback; one
    /// derived from the secret elsewhere; with only `--allow`, none (the addresses are
    /// checked); with neither, protected mode refuses unless `--insecure`.
    pub fn http_token(&self, addr: &str) -> anyhow::Result<Option<String>> {
        check_http_address(addr)?;
        if is_local(&format!("tcp://{addr}")) {
            return Ok(None);
        }
        // A run's own secret is known to no reader: it cannot make a token for them.
        if let Some(secret) = self.secret.as_ref().filter(|s| !s.is_fresh()) {
            return Ok(Some(secret.token()));
        }
        if !self.allow.is_empty() {
            return Ok(None);
        }
        if self.insecure {
            log::warn!("--http {addr} serves the live view to anyone who reaches it (--insecure)");
            return Ok(None);
        }
        bail!(
            "refusing to serve the live view on {addr} (--http) without authentication: give \
             --secret-file (clients then send the token `conquer secret token FILE` prints), \
             or --allow CIDR, bind a loopback address, or pass --insecure"
        )
    }

    /// Sets up a connecting socket to present the secret as `user` (its role and name);
    /// before it connects. Without a secret it connects as ZeroMQ's NULL mechanism does.
    pub fn present(&self, socket: &zmq::Socket, user: &str) -> anyhow::Result<()> {
        if let Some(secret) = &self.secret {
            let user = truncated(user, 255);
            socket
                .set_plain_username(Some(user))
                .and_then(|()| socket.set_plain_password(Some(&secret.password)))
                .map_err(|e| anyhow!("cannot set the socket's credentials: {e}"))?;
        }
        Ok(())
    }
}

pub(crate) fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether only this machine can reach `endpoint` once bound.
fn is_local(endpoint: &str) -> bool {
    if endpoint.starts_with("ipc://") || endpoint.starts_with("inproc://") {
        return true;
    }
    let Some((host, _port)) = endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Longest worker name a user id and a routing id carry (longer names are cut, at a
/// character boundary, the same way in both).
pub const NAME_IN_ID: usize = 200;

/// The user id a worker named `name` authenticates as.
pub fn worker_user(name: &str) -> String {
    format!("worker:{}", truncated(name, NAME_IN_ID))
}

/// The user id of the ventilator's connection to the sink.
pub const VENTILATOR_USER: &str = "ventilator";

/// With a secret, a message must come from the peer it speaks for: a worker's messages
/// from a connection authenticated as that worker (its routing id and any name it
/// declares match its user id), the ventilator's from one authenticated as the
/// ventilator. `Err` says what did not match; the message is then dropped as rejected.
pub fn speaks_for_itself(user: &str, peer: &[u8], message: &Message) -> Result<(), String> {
    let declared = match message {
        Message::Batch { .. } | Message::Stats { .. } => {
            return if user == VENTILATOR_USER {
                Ok(())
            } else {
                Err(format!(
                    "{} message from a peer authenticated as {user:?}, not the ventilator",
                    message.kind_name()
                ))
            };
        }
        Message::Hello(info) | Message::Join(info) | Message::Results { worker: info, .. } => {
            Some(info.name.as_str())
        }
        Message::Done { .. } | Message::Bye => None,
        // What only the ventilator or sink send is refused by the role itself.
        _ => return Ok(()),
    };
    let Some(name) = user.strip_prefix("worker:") else {
        return Err(format!(
            "{} message from a peer authenticated as {user:?}, not as a worker",
            message.kind_name()
        ));
    };
    let own_route =
        peer.len() > name.len() && peer.starts_with(name.as_bytes()) && peer[name.len()] == b'/';
    let own_name = declared.is_none_or(|d| truncated(d, NAME_IN_ID) == name);
    if own_route && own_name {
        Ok(())
    } else {
        Err(format!(
            "{} message speaking for another worker than the one it authenticated as ({user:?})",
            message.kind_name()
        ))
    }
}

/// What the handler answers one ZAP request with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Admit, as this user id.
    Admit(String),
    /// Refuse with status 400, for this reason.
    Refuse(String),
    /// A request the handler could not read: status 500 (libzmq refuses the peer).
    Broken(String),
}

/// The rules one handler enforces. Printing one never shows the password.
#[derive(Clone)]
struct Policy {
    password: Option<String>,
    allow: Vec<Cidr>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("secret", &self.password.is_some())
            .field("allow", &self.allow)
            .finish()
    }
}

impl Policy {
    /// Judges a ZAP request's frames after the version and request id: domain, address,
    /// routing id, mechanism, credentials.
    fn judge(&self, frames: &[Vec<u8>]) -> Verdict {
        let [domain, address, _routing_id, mechanism, credentials @ ..] = frames else {
            return Verdict::Broken(format!("{} frames in a ZAP request", frames.len() + 2));
        };
        if domain.as_slice() != DOMAIN.as_bytes() {
            return Verdict::Broken("a ZAP request for another domain".into());
        }
        let address_text = String::from_utf8_lossy(address);
        if !self.allow.is_empty() {
            let Ok(ip) = address_text.parse::<IpAddr>() else {
                return Verdict::Refuse(format!("address {address_text:?} is not an IP address"));
            };
            if !self.allow.iter().any(|c| c.contains(ip)) {
                return Verdict::Refuse("not in --allow".into());
            }
        }
        let Some(password) = &self.password else {
            return Verdict::Admit(String::new());
        };
        match (mechanism.as_slice(), credentials) {
            (b"PLAIN", [user, presented]) => {
                if !same(presented, password.as_bytes()) {
                    return Verdict::Refuse("wrong secret".into());
                }
                match std::str::from_utf8(user) {
                    Ok(user) if !user.is_empty() => Verdict::Admit(user.to_owned()),
                    _ => Verdict::Refuse("no user name".into()),
                }
            }
            (b"PLAIN", _) => Verdict::Broken("a PLAIN request without two credentials".into()),
            _ => Verdict::Refuse("no secret presented".into()),
        }
    }

    /// The reply frames for one request (`None` when it is too broken to answer at all).
    fn answer(&self, request: &[Vec<u8>]) -> (Vec<Vec<u8>>, Option<(String, String)>) {
        let (version, id, rest) = match request {
            [version, id, rest @ ..] => (version, id.clone(), rest),
            _ => return (Vec::new(), None),
        };
        let address = rest
            .get(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        let verdict = if version.as_slice() == b"1.0" {
            self.judge(rest)
        } else {
            Verdict::Broken("a ZAP request of another version".into())
        };
        let (status, text, user, refusal) = match verdict {
            Verdict::Admit(user) => ("200", "OK".to_owned(), user, None),
            Verdict::Refuse(why) => ("400", why.clone(), String::new(), Some((address, why))),
            Verdict::Broken(why) => ("500", why.clone(), String::new(), Some((address, why))),
        };
        let reply = vec![
            b"1.0".to_vec(),
            id,
            status.as_bytes().to_vec(),
            text.into_bytes(),
            user.into_bytes(),
            Vec::new(),
        ];
        (reply, refusal)
    }
}

/// The ZAP handler of one context and the monitors of the sockets it guards. It answers
/// from before the first guarded socket binds until every guarded socket has closed and
/// the handle is dropped, whichever comes last: a socket with a ZAP domain and no handler
/// would admit NULL peers (libzmq fails open there). Roles drop their sockets first, so
/// that dropping the handle ends the handler and the context can flush and terminate.
/// Refusals are counted here and logged with the reason.
pub struct Gate {
    refused: Arc<AtomicU64>,
    monitors: mpsc::Sender<Watched>,
    plain: bool,
    ctx: zmq::Context,
    stop: Arc<AtomicBool>,
    /// Wakes the handler's thread when a monitor arrives or the gate is dropped.
    wake: zmq::Socket,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long dropping a gate waits for its guarded sockets to be closed before it leaves
/// the handler running on its own (and says so): longer than a socket's LINGER.
const GATE_DROP_WAIT: Duration = Duration::from_millis(crate::sockets::LINGER_MS as u64 + 1000);

static MONITOR_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Gate {
    /// Starts the handler in `ctx` for `role`'s sockets, or `None` when `access` checks
    /// nothing. Fails if another handler already answers in that context (one handler per
    /// context is all libzmq allows, and two roles' rules must not be mixed).
    pub fn start(ctx: &zmq::Context, access: &Access, role: &str) -> anyhow::Result<Option<Gate>> {
        if !access.guarded() {
            return Ok(None);
        }
        let policy = Policy {
            password: access.secret.as_ref().map(|s| s.password.clone()),
            allow: access.allow.clone(),
        };
        let handler = ctx
            .socket(zmq::REP)
            .context("cannot create the authentication handler's socket")?;
        handler.set_linger(0)?;
        handler.bind(ZAP_ENDPOINT).map_err(|e| {
            anyhow!(
                "cannot start the authentication handler ({ZAP_ENDPOINT}: {e}); one guarded role \
                 per ZeroMQ context"
            )
        })?;
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (monitors, monitor_rx) = mpsc::channel();
        let wake_endpoint = monitor_endpoint();
        let woken = ctx.socket(zmq::PAIR)?;
        woken.bind(&wake_endpoint)?;
        let wake = ctx.socket(zmq::PAIR)?;
        wake.set_linger(0)?;
        wake.connect(&wake_endpoint)?;
        let thread = {
            let refused = refused.clone();
            let stop = stop.clone();
            let role = role.to_owned();
            let inbox = Inbox {
                monitors: monitor_rx,
                woken,
            };
            std::thread::Builder::new()
                .name(format!("{role}-auth"))
                .spawn(move || {
                    // A handler that dies would leave allowlist-only sockets admitting
                    // everyone (libzmq fails open without one): end the process instead.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        serve(handler, policy, inbox, &refused, &stop, &role)
                    }));
                    if served.is_err() {
                        log::error!("the authentication handler panicked; stopping the process");
                        std::process::abort();
                    }
                })
                .context("cannot start the authentication handler's thread")?
        };
        // The socket was bound above, in this thread: requests queue from now on, so no
        // guarded socket can bind before the handler answers.
        Ok(Some(Gate {
            refused,
            monitors,
            plain: access.secret.is_some(),
            ctx: ctx.clone(),
            stop,
            wake,
            thread: Some(thread),
        }))
    }

    /// Guards `socket` (not yet bound): every connection to it goes through this handler,
    /// and its refused handshakes are counted. `what` names it in logs.
    pub fn guard(&self, socket: &zmq::Socket, what: &str) -> anyhow::Result<()> {
        self.enlist(socket, what, None)
    }

    /// [`Gate::guard`], for a role that also watches the socket's connections itself:
    /// libzmq allows one monitor per socket, which is the gate's, so every event it reads
    /// (connections, disconnections, failed handshakes) is passed on to the PAIR returned.
    pub fn guard_and_share(&self, socket: &zmq::Socket, what: &str) -> anyhow::Result<zmq::Socket> {
        let endpoint = monitor_endpoint();
        let forward = self.ctx.socket(zmq::PAIR)?;
        forward.set_linger(0)?;
        forward.bind(&endpoint)?;
        let shared = self.ctx.socket(zmq::PAIR)?;
        shared.set_linger(0)?;
        shared.connect(&endpoint)?;
        self.enlist(socket, what, Some(forward))?;
        Ok(shared)
    }

    fn enlist(
        &self,
        socket: &zmq::Socket,
        what: &str,
        forward: Option<zmq::Socket>,
    ) -> anyhow::Result<()> {
        socket
            .set_zap_domain(DOMAIN)
            .and_then(|()| socket.set_plain_server(self.plain))
            .map_err(|e| anyhow!("cannot set up authentication on the {what} socket: {e}"))?;
        // CLOSED: its listener is gone (the socket is closing), so no connection can
        // arrive that the handler would have to judge, even while old ones linger.
        // NO_DETAIL: a peer without the secret often closes first when both sides see
        // the mechanisms differ, and this side then sees only a connection reset.
        let events = WATCHED_EVENTS
            | zmq::SocketEvent::CLOSED as i32
            | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
            | if forward.is_some() { SHARED_EVENTS } else { 0 };
        let monitor = watch_events(&self.ctx, socket, events)?;
        self.monitors
            .send(Watched {
                monitor,
                what: what.to_owned(),
                forward,
            })
            .map_err(|_| anyhow!("the authentication handler has stopped"))?;
        // Read from now on, so that no refusal waits for the handler's next round.
        let _ = self.wake.send("", zmq::DONTWAIT);
        Ok(())
    }

    /// Handshakes refused so far on the guarded sockets.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The count behind [`Gate::refused`], to read after the gate is dropped (when every
    /// event of its closed sockets has been counted).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.refused.clone()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send("", zmq::DONTWAIT);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + GATE_DROP_WAIT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::warn!(
                "a guarded socket is still open after its role ended; its authentication handler \
                 keeps answering until it closes"
            );
        }
    }
}

/// A fresh inproc endpoint for a socket monitor: unique in the process.
pub fn monitor_endpoint() -> String {
    format!(
        "inproc://conquer-monitor-{}",
        MONITOR_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A PAIR socket receiving `socket`'s failed-handshake events.
pub fn watch(ctx: &zmq::Context, socket: &zmq::Socket) -> anyhow::Result<zmq::Socket> {
    watch_events(ctx, socket, WATCHED_EVENTS)
}

/// Connections and disconnections too, for a role that counts its peers.
const SHARED_EVENTS: i32 = zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
    | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
    | zmq::SocketEvent::DISCONNECTED as i32;

fn watch_events(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    events: i32,
) -> anyhow::Result<zmq::Socket> {
    let endpoint = monitor_endpoint();
    socket
        .monitor(&endpoint, events)
        .map_err(|e| anyhow!("cannot monitor a socket: {e}"))?;
    let pair = ctx
        .socket(zmq::PAIR)
        .context("cannot create a monitor socket")?;
    pair.set_linger(0)?;
    pair.connect(&endpoint)
        .map_err(|e| anyhow!("cannot connect the monitor socket: {e}"))?;
    Ok(pair)
}

/// A failed handshake, as a monitor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer's handler refused us, or ours refused the peer (ZAP status code).
    Refused(u32),
    /// The two sides speak different security mechanisms: one has a secret, the other not.
    MechanismMismatch,
    /// Some other protocol error during the handshake (a stranger speaking something else).
    Protocol(u32),
    /// The connection dropped during the handshake (watched on bound sockets only).
    Dropped,
    /// The monitored socket closed, or (for a bound one) its listener did: no new
    /// connection can arrive.
    Closed,
}

/// One monitor event: its kind and value, from the event's first frame.
pub fn event(frames: &[Vec<u8>]) -> Option<(u16, u32)> {
    let head = frames.first().filter(|f| f.len() >= 6)?;
    Some((
        u16::from_le_bytes([head[0], head[1]]),
        u32::from_le_bytes([head[2], head[3], head[4], head[5]]),
    ))
}

impl Failure {
    /// The failure a monitor event reports, if it reports one.
    pub fn of(event: u16, value: u32) -> Option<Failure> {
        if event == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as u16 {
            Some(Failure::Refused(value))
        } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as u16 {
            Some(if value == MECHANISM_MISMATCH {
                Failure::MechanismMismatch
            } else {
                Failure::Protocol(value)
            })
        } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as u16 {
            Some(Failure::Dropped)
        } else if event == zmq::SocketEvent::MONITOR_STOPPED as u16
            || event == zmq::SocketEvent::CLOSED as u16
        {
            Some(Failure::Closed)
        } else {
            None
        }
    }
}

/// The first failure on a connecting socket that means its peer will never admit it (its
/// secret or address refused, or a mechanism mismatch); other handshake errors are logged
/// and the socket redials.
pub fn refusal(failures: Vec<Failure>, peer: &str) -> Option<Failure> {
    let mut refusal = None;
    for failure in failures {
        match failure {
            Failure::Refused(_) | Failure::MechanismMismatch => {
                refusal.get_or_insert(failure);
            }
            Failure::Protocol(code) => log::warn!(
                "the handshake with the {peer} failed (ZeroMQ protocol error {code:#x}); trying \
                 again (is it a conquer {peer} of this version?)"
            ),
            Failure::Closed | Failure::Dropped => {}
        }
    }
    refusal
}

/// The failures waiting on a monitor socket, read without blocking.
pub fn failures(monitor: &zmq::Socket) -> Vec<Failure> {
    let mut out = Vec::new();
    while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
        out.extend(event(&frames).and_then(|(e, v)| Failure::of(e, v)));
    }
    out
}

/// What a connecting role tells its user when `peer` (the sink, the ventilator) at
/// `endpoint` refused it.
pub fn refusal_message(failure: Failure, peer: &str, endpoint: &str, access: &Access) -> String {
    match failure {
        Failure::Refused(_) if access.secret.is_some() => format!(
            "the {peer} at {endpoint} refused this connection: wrong secret (give every role the \
             same --secret-file) or this address is not in its --allow list"
        ),
        Failure::Refused(_) => format!(
            "the {peer} at {endpoint} refused this connection: this address is not in its --allow \
             list, or it wants a secret (pass --secret-file)"
        ),
        Failure::MechanismMismatch if access.secret.is_some() => format!(
            "the {peer} at {endpoint} runs without a secret but this side has --secret-file; give \
             every role the same --secret-file, or none"
        ),
        Failure::MechanismMismatch => format!(
            "the {peer} at {endpoint} wants a secret: pass --secret-file with the file it was \
             given (made by `conquer secret new`)"
        ),
        Failure::Closed => format!("the connection to the {peer} at {endpoint} closed"),
        Failure::Dropped => {
            format!("the connection to the {peer} at {endpoint} dropped during the handshake")
        }
        Failure::Protocol(code) => format!(
            "the handshake with the {peer} at {endpoint} failed (ZeroMQ protocol error \
             {code:#x}): is it a conquer {peer} of this version?"
        ),
    }
}

/// The handler's loop: answers ZAP requests and reads the guarded sockets' monitors until
/// the gate is dropped and every guarded socket has closed, or the context ends.
/// What reaches the handler's thread besides ZAP requests: the monitors of newly guarded
/// sockets, and a nudge to look at them (or at the stop flag).
struct Inbox {
    monitors: mpsc::Receiver<Watched>,
    woken: zmq::Socket,
}

/// A guarded socket's monitor, its name in logs, and where its events are passed on.
struct Watched {
    monitor: zmq::Socket,
    what: String,
    forward: Option<zmq::Socket>,
}

fn serve(
    handler: zmq::Socket,
    policy: Policy,
    inbox: Inbox,
    refused: &AtomicU64,
    stop: &AtomicBool,
    role: &str,
) {
    let mut log = crate::logging::RateLimited::new(10, Duration::from_secs(10));
    let mut monitors: Vec<Watched> = Vec::new();
    loop {
        while inbox.woken.recv_bytes(zmq::DONTWAIT).is_ok() {}
        // Read before the monitors: a socket guarded just before the stop is seen.
        let stopping = stop.load(Ordering::Relaxed);
        monitors.extend(inbox.monitors.try_iter());
        if stopping && monitors.is_empty() {
            return;
        }
        let mut items = Vec::with_capacity(monitors.len() + 2);
        items.push(handler.as_poll_item(zmq::POLLIN));
        items.push(inbox.woken.as_poll_item(zmq::POLLIN));
        items.extend(monitors.iter().map(|w| w.monitor.as_poll_item(zmq::POLLIN)));
        match zmq::poll(&mut items, 100) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(zmq::Error::ETERM) => return,
            Err(e) => {
                // Unanswered, an allowlist-only socket would admit everyone: stop it all.
                log::error!("the authentication handler failed ({e}); stopping the process");
                std::process::abort();
            }
        }
        while let Ok(request) = handler.recv_multipart(zmq::DONTWAIT) {
            let (reply, refusal) = policy.answer(&request);
            if let Some((address, why)) = refusal {
                log.warn_at(std::time::Instant::now(), || {
                    format!("refused a connection to the {role} from {address}: {why}")
                });
            }
            if !reply.is_empty() {
                if let Err(e) = handler.send_multipart(reply, 0) {
                    log::error!("the authentication handler cannot answer: {e}");
                }
            }
        }
        monitors.retain(|watched| {
            let what = &watched.what;
            let mut open = true;
            let mut seen = Vec::new();
            while let Ok(frames) = watched.monitor.recv_multipart(zmq::DONTWAIT) {
                seen.extend(event(&frames).and_then(|(e, v)| Failure::of(e, v)));
                if let Some(forward) = &watched.forward {
                    let _ = forward.send_multipart(frames, zmq::DONTWAIT);
                }
            }
            for failure in seen {
                if failure == Failure::Closed {
                    log::debug!("the {role}'s {what} socket closed");
                    open = false;
                    continue;
                }
                refused.fetch_add(1, Ordering::Relaxed);
                // Refusals by the handler were logged with their address above.
                if !matches!(failure, Failure::Refused(_)) {
                    log.warn_at(std::time::Instant::now(), || match failure {
                        Failure::MechanismMismatch => format!(
                            "refused a connection to the {role}'s {what} socket: the peer \
                             presented no secret (libzmq does not say from where)"
                        ),
                        Failure::Dropped => format!(
                            "a connection to the {role}'s {what} socket dropped during the \
                             handshake (a peer without the secret, or one that hung up)"
                        ),
                        other => {
                            format!("refused a connection to the {role}'s {what} socket: {other:?}")
                        }
                    });
                }
            }
            open
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(password: Option<&str>, allow: &[&str]) -> Policy {
        Policy {
            password: password.map(str::to_owned),
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn request(address: &str, mechanism: &str, credentials: &[&str]) -> Vec<Vec<u8>> {
        let mut frames = vec![
            b"1.0".to_vec(),
            b"7".to_vec(),
            DOMAIN.as_bytes().to_vec(),
            address.as_bytes().to_vec(),
            b"id".to_vec(),
            mechanism.as_bytes().to_vec(),
        ];
        frames.extend(credentials.iter().map(|c| c.as_bytes().to_vec()));
        frames
    }

    fn status(reply: &[Vec<u8>]) -> (&str, &str) {
        (
            std::str::from_utf8(&reply[2]).unwrap(),
            std::str::from_utf8(&reply[4]).unwrap(),
        )
    }

    #[test]
    fn the_handler_admits_the_secret_and_the_listed_addresses_only() {
        let p = policy(Some("abcd"), &["10.0.0.0/8"]);
        let (reply, refusal) = p.answer(&request("10.1.2.3", "PLAIN", &["worker:a", "abcd"]));
        assert_eq!(status(&reply), ("200", "worker:a"));
        assert_eq!(reply[1], b"7");
        assert!(refusal.is_none());
        let (reply, refusal) = p.answer(&request("10.1.2.3", "PLAIN", &["worker:a", "abce"]));
        assert_eq!(status(&reply), ("400", ""));
        assert_eq!(refusal.unwrap().1, "wrong secret");
        let (reply, refusal) = p.answer(&request("192.168.0.1", "PLAIN", &["worker:a", "abcd"]));
        assert_eq!(status(&reply).0, "400");
        assert_eq!(
            refusal.unwrap(),
            ("192.168.0.1".into(), "not in --allow".into())
        );
        assert_eq!(
            status(&p.answer(&request("10.0.0.1", "NULL", &[])).0).0,
            "400"
        );
        // Allowlist only: NULL peers from the list are admitted.
        let p = policy(None, &["127.0.0.1"]);
        assert_eq!(
            status(&p.answer(&request("127.0.0.1", "NULL", &[])).0).0,
            "200"
        );
        assert_eq!(
            status(&p.answer(&request("127.0.0.2", "NULL", &[])).0).0,
            "400"
        );
    }

    #[test]
    fn broken_requests_are_refused_never_admitted() {
        let p = policy(Some("abcd"), &[]);
        let mut wrong_version = request("10.0.0.1", "PLAIN", &["u", "abcd"]);
        wrong_version[0] = b"2.0".to_vec();
        assert_eq!(status(&p.answer(&wrong_version).0).0, "500");
        let mut other_domain = request("10.0.0.1", "PLAIN", &["u", "abcd"]);
        other_domain[2] = b"elsewhere".to_vec();
        assert_eq!(status(&p.answer(&other_domain).0).0, "500");
        assert_eq!(
            status(&p.answer(&request("10.0.0.1", "PLAIN", &["u"])).0).0,
            "500"
        );
        assert_eq!(
            status(&p.answer(&request("x", "PLAIN", &["", "abcd"])).0).0,
            "400"
        );
        assert!(p.answer(&[b"1.0".to_vec()]).0.is_empty());
    }

    #[test]
    fn ranges_parse_strictly_and_match_by_prefix() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        assert!(!host.contains("192.168.1.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00::/8");
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "box-a",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let e = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn a_malformed_endpoint_is_named_as_such_not_refused_as_exposed() {
        for bad in [
            "tcp://",
            "udp://x",
            "127.0.0.1:5558",
            "tcp://10.0.0.1:70000",
        ] {
            for access in [
                Access::default(),
                Access {
                    insecure: true,
                    ..Access::default()
                },
            ] {
                let e = access
                    .check_exposure(bad, "--bind")
                    .expect_err(bad)
                    .to_string();
                assert!(e.starts_with("--bind") && e.contains("expected"), "{e}");
                assert!(!e.contains("authentication"), "{e}");
            }
        }
        for bad in ["localhost", "", "0.0.0.0:", "host:99999"] {
            let e = Access::default()
                .http_token(bad)
                .expect_err(bad)
                .to_string();
            assert!(e.contains("--http") && e.contains("HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn only_loopback_and_local_transports_escape_protected_mode() {
        for local in [
            "tcp://127.0.0.1:5557",
            "tcp://127.0.0.1:*",
            "tcp://localhost:1",
            "tcp://[::1]:5",
            "ipc:///tmp/x",
        ] {
            assert!(
                Access::default().check_exposure(local, "--bind").is_ok(),
                "{local}"
            );
        }
        for exposed in [
            "tcp://*:5557",
            "tcp://0.0.0.0:1",
            "tcp://10.0.0.1:1",
            "tcp://eth0:1",
        ] {
            let e = Access::default()
                .check_exposure(exposed, "--bind")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("conquer secret new") && e.contains("--allow"),
                "{e}"
            );
            assert!(e.contains("--insecure"), "{e}");
            let insecure = Access {
                insecure: true,
                ..Access::default()
            };
            assert!(insecure.check_exposure(exposed, "--bind").is_ok());
            let allowed = Access {
                allow: vec!["10.0.0.0/8".parse().unwrap()],
                ..Access::default()
            };
            assert!(allowed.check_exposure(exposed, "--bind").is_ok());
        }
    }

    #[test]
    fn secret_files_are_made_private_and_refused_when_shared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        Secret::create(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = Secret::load(&path).unwrap();
        assert_eq!(secret.password.len(), 2 * 2 * NEW_SECRET_BYTES);
        assert!(!format!("{secret:?}").contains(&secret.password));
        // A second `new` keeps the first unless forced; forced, it changes.
        assert!(Secret::create(&path, false).is_err());
        Secret::create(&path, true).unwrap();
        assert_ne!(Secret::load(&path).unwrap().password, secret.password);
        for mode in [0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Secret::load(&path).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Secret::load(&path).unwrap_err().to_string();
        assert!(e.contains("conquer secret new"), "{e}");
        let e = Secret::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("conquer secret new"), "{e}");
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abcd", b"abcd"));
        assert!(!same(b"abcd", b"abce"));
        assert!(!same(b"abcd", b"abc"));
        assert!(!same(b"", b"a"));
    }

    /// A guarded ROUTER on loopback and the endpoint it bound.
    fn guarded_router(ctx: &zmq::Context, access: &Access) -> (Gate, zmq::Socket, String) {
        let gate = Gate::start(ctx, access, "sink").unwrap().unwrap();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        gate.guard(&router, "results").unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        (gate, router, endpoint)
    }

    /// A DEALER presenting `access`'s secret as `user`, and its monitor.
    fn client(
        ctx: &zmq::Context,
        access: &Access,
        user: &str,
        endpoint: &str,
    ) -> (zmq::Socket, zmq::Socket) {
        let dealer = ctx.socket(zmq::DEALER).unwrap();
        dealer.set_linger(0).unwrap();
        access.present(&dealer, user).unwrap();
        let monitor = watch(ctx, &dealer).unwrap();
        dealer.connect(endpoint).unwrap();
        (dealer, monitor)
    }

    fn first_failure(monitor: &zmq::Socket) -> Failure {
        let mut items = [monitor.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 10_000).unwrap();
        *failures(monitor)
            .first()
            .expect("a failed handshake within 10 s")
    }

    fn secret_in(dir: &Path, name: &str) -> Secret {
        let path = dir.join(name);
        Secret::create(&path, false).unwrap();
        Secret::load(&path).unwrap()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn sockets_admit_the_secret_as_its_user_and_refuse_everyone_else() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access {
            secret: Some(secret_in(dir.path(), "a")),
            ..Access::default()
        };
        let ctx = zmq::Context::new();
        let (gate, router, endpoint) = guarded_router(&ctx, &access);

        let (good, _monitor) = client(&ctx, &access, "worker:w1", &endpoint);
        good.send("hello", 0).unwrap();
        let mut id = zmq::Message::new();
        router.recv(&mut id, 0).unwrap();
        let mut body = zmq::Message::new();
        router.recv(&mut body, 0).unwrap();
        assert_eq!(&body[..], b"hello");
        assert_eq!(body.gets("User-Id"), Some("worker:w1"));

        let wrong = Access {
            secret: Some(secret_in(dir.path(), "b")),
            ..Access::default()
        };
        let (none, monitor) = client(&ctx, &Access::default(), "worker:w3", &endpoint);
        assert_eq!(first_failure(&monitor), Failure::MechanismMismatch);
        drop(none);
        wait_for("a peer without the secret counted", || gate.refused() >= 1);
        let before = gate.refused();
        let (_bad, monitor) = client(&ctx, &wrong, "worker:w2", &endpoint);
        assert_eq!(first_failure(&monitor), Failure::Refused(400));
        wait_for("a wrong secret counted", || gate.refused() > before);
        assert_eq!(body.gets("User-Id"), Some("worker:w1"));
    }

    #[test]
    fn the_allowlist_refuses_other_addresses_with_or_without_a_secret() {
        let ctx = zmq::Context::new();
        let access = Access {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..Access::default()
        };
        let (gate, _router, endpoint) = guarded_router(&ctx, &access);
        let (_peer, monitor) = client(&ctx, &Access::default(), "worker:w", &endpoint);
        assert_eq!(first_failure(&monitor), Failure::Refused(400));
        wait_for("a refusal counted", || gate.refused() >= 1);

        let ctx = zmq::Context::new();
        let access = Access {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..Access::default()
        };
        let (_gate, router, endpoint) = guarded_router(&ctx, &access);
        let (peer, _monitor) = client(&ctx, &Access::default(), "worker:w", &endpoint);
        peer.send("in", 0).unwrap();
        let frames = router.recv_multipart(0).unwrap();
        assert_eq!(frames[1], b"in");
    }

    #[test]
    fn a_role_that_counts_its_peers_shares_the_gates_monitor() {
        let dir = tempfile::tempdir().unwrap();
        let access = Access {
            secret: Some(secret_in(dir.path(), "a")),
            ..Access::default()
        };
        let ctx = zmq::Context::new();
        let gate = Gate::start(&ctx, &access, "ventilator").unwrap().unwrap();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.set_linger(0).unwrap();
        let shared = gate.guard_and_share(&push, "tasks").unwrap();
        push.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = push.get_last_endpoint().unwrap().unwrap();
        let pull = |access: &Access| {
            let pull = ctx.socket(zmq::PULL).unwrap();
            pull.set_linger(0).unwrap();
            access.present(&pull, "worker:w").unwrap();
            let monitor = watch(&ctx, &pull).unwrap();
            pull.connect(&endpoint).unwrap();
            (pull, monitor)
        };
        let (_member, _m) = pull(&access);
        let (_stranger, monitor) = pull(&Access::default());
        assert_eq!(first_failure(&monitor), Failure::MechanismMismatch);
        // The role sees the member connect; the gate counts the stranger.
        let mut connected = false;
        wait_for("the member's handshake passed on", || {
            while let Ok(frames) = shared.recv_multipart(zmq::DONTWAIT) {
                connected |= event(&frames).map(|(e, _)| e)
                    == Some(zmq::SocketEvent::HANDSHAKE_SUCCEEDED as u16);
            }
            connected
        });
        wait_for("the stranger counted", || gate.refused() >= 1);
    }

    #[test]
    fn a_guarded_socket_never_fails_open() {
        // One handler per context: a second role's rules are refused, never mixed in.
        let ctx = zmq::Context::new();
        let access = Access {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..Access::default()
        };
        let (gate, router, endpoint) = guarded_router(&ctx, &access);
        let e = Gate::start(
            &ctx,
            &Access {
                allow: vec!["0.0.0.0/0".parse().unwrap()],
                ..Access::default()
            },
            "ventilator",
        )
        .err()
        .expect("a second handler in one context is refused")
        .to_string();
        assert!(e.contains("one guarded role per ZeroMQ context"), "{e}");
        // Dropped while its socket is still open, the handler keeps answering: a NULL
        // peer from outside the list is still refused (libzmq would admit it if no
        // handler answered).
        drop(gate);
        let (_peer, monitor) = client(&ctx, &Access::default(), "worker:w", &endpoint);
        assert_eq!(first_failure(&monitor), Failure::Refused(400));
        // Once the socket closes, the handler ends and the context can terminate.
        drop(router);
        drop(_peer);
        drop(monitor);
        let term = std::thread::spawn(move || drop(ctx));
        wait_for("the context terminated", || term.is_finished());
    }

    #[test]
    fn a_member_speaks_only_for_itself() {
        use crate::protocol::WorkerInfo;
        let info = |name: &str| WorkerInfo {
            name: name.into(),
            session: 1,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint: 1,
            codecs: 0,
            fill: 0,
        };
        let own = b"w1/0000000000000001".as_slice();
        let user = worker_user("w1");
        assert!(speaks_for_itself(&user, own, &Message::Hello(info("w1"))).is_ok());
        assert!(speaks_for_itself(&user, own, &Message::Bye).is_ok());
        // Another worker's name, in the routing id or in the message, is refused.
        assert!(speaks_for_itself(&user, own, &Message::Join(info("w2"))).is_err());
        assert!(speaks_for_itself(&user, b"w2/0000000000000001", &Message::Bye).is_err());
        assert!(speaks_for_itself(&user, b"w1", &Message::Bye).is_err());
        let results = Message::Results {
            batch: 1,
            worker: info("w2"),
            results: Vec::new(),
        };
        assert!(speaks_for_itself(&user, own, &results).is_err());
        // Only the ventilator announces batches; a worker that tries is refused.
        let stats = Message::Stats {
            batch: 1,
            redispatched: 0,
            rejected: 0,
            refused: 0,
            chunks: 0,
            items_redone: 0,
            chunks_cut: 0,
            items_handed_on: 0,
            cancel_us: 0,
            inputs_wire: 0,
            inputs: 0,
            last: true,
        };
        assert!(speaks_for_itself(VENTILATOR_USER, b"x", &stats).is_ok());
        assert!(speaks_for_itself(&user, own, &stats).is_err());
        assert!(speaks_for_itself(VENTILATOR_USER, own, &Message::Bye).is_err());
        // Long names are cut the same way in the user id and the routing id.
        let long = "é".repeat(150);
        let cut = truncated(&long, NAME_IN_ID);
        let route = format!("{cut}/0000000000000001");
        assert!(speaks_for_itself(
            &worker_user(&long),
            route.as_bytes(),
            &Message::Hello(info(&long))
        )
        .is_ok());
    }

    #[test]
    fn a_runs_own_secret_is_new_each_time_and_makes_no_live_view_token() {
        let (a, b) = (Secret::fresh().unwrap(), Secret::fresh().unwrap());
        assert!(a.is_fresh() && b.is_fresh());
        assert!(!same_text(&a.password, &b.password));
        assert_eq!(
            a.password.len(),
            2 * 2 * NEW_SECRET_BYTES,
            "as long as a file's"
        );
        assert_eq!(format!("{a:?}"), "Secret(made for this run)");
        let access = Access {
            secret: Some(a),
            ..Access::default()
        };
        assert!(access.guarded());
        // Nobody outside the run knows it: a reachable live view needs --insecure.
        assert!(access.http_token("0.0.0.0:8080").is_err());
        let open = Access {
            insecure: true,
            ..access
        };
        assert_eq!(open.http_token("0.0.0.0:8080").unwrap(), None);
    }
}
