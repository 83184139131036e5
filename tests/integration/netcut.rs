//! A network cut, for real: one worker runs in a network namespace of its own, joined to
//! this one by a veth pair, and the link is taken down mid-batch (packets vanish, nothing
//! closes). The ventilator must declare the worker gone by heartbeat and hand its tasks on.
//! Needs root and iproute2; CI sets CONQUER_REQUIRE_NETNS=1 so that a machine without them
//! fails rather than skips.

use crate::util::{self, Proc};
use std::process::Command;
use std::time::Duration;

/// A namespace and the veth pair into it; removed on drop.
struct Netns {
    name: String,
    outside: String,
    /// Address of this side of the link, which the namespace reaches us at.
    host_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let id = std::process::id() % 10_000;
        // A /30 of our own inside this sandbox; the octet keeps parallel runs apart.
        let octet = id % 250 + 1;
        let ns = Netns {
            name: format!("cq-netcut-{id}"),
            outside: format!("cqa{id}"),
            host_ip: format!("10.231.{octet}.1"),
        };
        let inside = format!("cqb{id}");
        let guest_ip = format!("10.231.{octet}.2/30");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.outside,
        ])?;
        ip(&["link", "set", &ns.outside, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &guest_ip, "dev", &inside])?;
        ip(&["-n", &ns.name, "link", "set", &inside, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.outside, if up { "up" } else { "down" }])
            .expect("changing the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outside]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn a_worker_cut_off_by_the_network_is_declared_gone_and_nothing_is_lost() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            if std::env::var("CONQUER_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
                panic!("CONQUER_REQUIRE_NETNS=1 but no network namespace: {why}");
            }
            eprintln!("skipping: cannot make a network namespace ({why}); run as root");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let fast = ["--heartbeat-ms", "100", "--liveness", "5"];
    // Bound on every interface: loopback for the local worker, the veth for the other.
    let sink = Proc::start(
        "sink",
        &[
            "sink",
            "--bind",
            "tcp://0.0.0.0:0",
            "--json",
            "--results",
            results.to_str().unwrap(),
        ],
    );
    let sink_port = sink
        .endpoint("results")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let mut vent_args = vec![
        "ventilator",
        "--bind",
        "tcp://0.0.0.0:0",
        "--wait-workers",
        "2",
        "--tasks",
        "400",
        "--min-ms",
        "2",
        "--max-ms",
        "8",
    ];
    let local_sink = format!("tcp://127.0.0.1:{sink_port}");
    vent_args.extend(["--sink", &local_sink]);
    vent_args.extend(fast);
    let vent = Proc::start("ventilator", &vent_args);
    let vent_port = vent
        .endpoint("tasks")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();

    let remote_vent = format!("tcp://{}:{vent_port}", ns.host_ip);
    let remote_sink = format!("tcp://{}:{sink_port}", ns.host_ip);
    let binary = util::binary();
    let mut cut_args = vec![
        "netns",
        "exec",
        &ns.name,
        binary.to_str().unwrap(),
        "-v",
        "worker",
        "--name",
        "cut",
        "--backend",
        "sleep",
        "--ventilator",
        &remote_vent,
        "--sink",
        &remote_sink,
        "--exit-when-done",
    ];
    cut_args.extend(fast);
    let cut = Proc::program("cut", "ip", &cut_args);
    let local_vent = format!("tcp://127.0.0.1:{vent_port}");
    let mut steady_args = vec!["--exit-when-done"];
    steady_args.extend(fast);
    let steady = util::worker("steady", &local_vent, &local_sink, &steady_args);

    sink.wait_for("clock started");
    std::thread::sleep(Duration::from_millis(200)); // the scenario: cut mid-batch
    ns.link(false);
    vent.wait_for("worker cut silent for");
    ns.link(true);

    let r = util::completed(sink, 400, Some(&results));
    assert!(
        r["redispatched"].as_u64().unwrap() >= 1,
        "its tasks went to the other: {r}"
    );
    let (status, _, log) = vent.finish();
    assert!(status.success(), "{log}");
    drop((cut, steady));
}
