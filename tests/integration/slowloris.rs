//! The live view against slow and oversized clients, on a real `conquer run --http`: a
//! thousand connections dribbling a request head from one address cost the process a
//! bounded number of threads while `/api/status` still answers another address, the excess
//! is refused at once, a head over the size or header-count limit is refused (ordinary
//! requests, HEAD, 404 and 405 answered as before), and a head dribbled a byte a second is
//! cut off after the head timeout.

use crate::util::Proc;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// Slow connections in the attack.
const SLOW: usize = 1000;
/// The most threads the whole `run` process may have during the attack.
const THREAD_BOUND: usize = 64;
/// Well past the server's head timeout (5 s), well before a test would seem hung.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(10);

/// A `conquer run` that lasts longer than any test here (killed when dropped), with the live
/// view on a free loopback port.
fn live_run() -> (Proc, SocketAddr) {
    let run = Proc::start(
        "run",
        &[
            "run",
            "--workers",
            "1",
            "--backend",
            "sleep",
            "--tasks",
            "100000",
            "--min-ms",
            "5",
            "--max-ms",
            "5",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let base = run.live_view();
    let addr = base
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("no address in {base:?}: {e}"));
    (run, addr)
}

/// A TCP connection to `to` from `source` (any 127.0.0.0/8 address is this machine), so
/// that the attack and the honest client are different client addresses.
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("the live view listens on IPv4 here: {to}")
    };
    let address = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh descriptor, owned by the TcpStream at once; the addresses live on the
    // stack for the duration of each call and are given with their size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = address(SocketAddrV4::new(source, 0));
        if libc::bind(fd, (&raw const local).cast(), size) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = address(to);
        if libc::connect(fd, (&raw const remote).cast(), size) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Lets this test process hold the attack's descriptors where the soft limit is low.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < 4096 {
            limit.rlim_cur = limit.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the run's /proc entry")
        .count()
}

/// `/api/status`, from 127.0.0.1: its code and body.
fn status(addr: SocketAddr) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(CUT_OFF_WITHIN))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{addr}/api/status"))
        .call()
        .unwrap_or_else(|e| panic!("/api/status did not answer: {e}"));
    let code = response.status().as_u16();
    (code, response.body_mut().read_to_string().unwrap())
}

/// What the server sends before it closes, or `None` if it reset the connection; panics if
/// it neither answers nor closes within `CUT_OFF_WITHIN`.
fn until_closed(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(CUT_OFF_WITHIN)).unwrap();
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!(
                "the live view kept the connection open {CUT_OFF_WITHIN:?} (sent so far: {:?})",
                String::from_utf8_lossy(&answer)
            )
        }
        Err(_) => None,
    }
}

#[test]
fn a_thousand_slow_clients_cost_bounded_threads_and_the_status_still_answers() {
    raise_descriptor_limit();
    let (run, addr) = live_run();
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|n| {
            let mut s = connect_from(attacker, addr)
                .unwrap_or_else(|e| panic!("slow connection {n} from {attacker}: {e}"));
            // A request head that has begun and is not over.
            let _ = s.write_all(b"GET /api/status HTTP/1.1\r\nHost: conquer\r\nX-Slow: ");
            s
        })
        .collect();
    let opened = std::time::Instant::now();
    let mut most = threads(run.pid());
    for round in 0..3 {
        // One more byte on each connection still open; then the honest client, whose
        // connection comes after all of them, so every slow one has been accepted.
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
        most = most.max(threads(run.pid()));
        let (code, body) = status(addr);
        assert_eq!(code, 200, "round {round}: {body}");
        assert!(body.starts_with('{'), "round {round}: {body}");
        most = most.max(threads(run.pid()));
    }
    assert!(
        most < THREAD_BOUND,
        "the run had {most} threads with {SLOW} slow connections open (bound {THREAD_BOUND})"
    );
    // Beyond the per-address cap, a connection was refused at once, not held: unless the
    // held ones timed out (5 s) before the server came to accept it, freeing their
    // places (a loaded machine); then it is held and timed out in its turn.
    let within_head_timeout = opened.elapsed() < Duration::from_secs(5);
    let last = slow.last_mut().unwrap();
    if let Some(answer) = until_closed(last) {
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 503")
                || (!within_head_timeout && answer.starts_with("HTTP/1.1 408")),
            "{answer}"
        );
    }
    drop(slow);
}

#[test]
fn a_request_head_over_the_limits_is_refused() {
    let (_run, addr) = live_run();
    let mut long = b"GET /api/status HTTP/1.1\r\nHost: conquer\r\nX-Fill: ".to_vec();
    long.resize(16 * 1024, b'a');
    long.extend(b"\r\n\r\n");
    let mut many = b"GET /api/status HTTP/1.1\r\nHost: conquer\r\n".to_vec();
    for n in 0..100 {
        many.extend(format!("X-{n}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    for (what, head) in [("16 KiB head", long), ("100 headers", many)] {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&head);
        if let Some(answer) = until_closed(&mut s) {
            assert!(answer.starts_with("HTTP/1.1 431 "), "{what}: {answer}");
        }
    }
    // Ordinary requests still get their answers, as before.
    assert_eq!(status(addr).0, 200);
    for (request, first_line) in [
        (
            "HEAD / HTTP/1.1\r\nHost: conquer\r\n\r\n",
            "HTTP/1.1 200 OK",
        ),
        ("GET /nope HTTP/1.0\r\n\r\n", "HTTP/1.1 404 Not Found"),
        (
            "POST /api/status HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let answer = until_closed(&mut s).expect("an answer, not a reset");
        let (head, body) = answer.split_once("\r\n\r\n").expect(&answer);
        assert!(head.starts_with(first_line), "{request:?}: {answer}");
        if request.starts_with("HEAD") {
            assert!(
                body.is_empty() && head.contains("Content-Length: "),
                "{answer}"
            );
        }
    }
}

#[test]
fn a_head_dribbled_a_byte_a_second_is_cut_off() {
    let (_run, addr) = live_run();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/status HTTP/1.1\r\nHost: conquer\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let mut writer = s.try_clone().unwrap();
    // The attack's pace, not synchronisation: it stops when the server closes.
    let dribble = std::thread::spawn(move || {
        while started.elapsed() < 2 * CUT_OFF_WITHIN && writer.write_all(b"a").is_ok() {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let answer = until_closed(&mut s);
    let took = started.elapsed();
    assert!(took < CUT_OFF_WITHIN, "cut off after {took:?}");
    if let Some(answer) = answer {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
            "{answer}"
        );
    }
    drop(s);
    dribble.join().unwrap();
}
