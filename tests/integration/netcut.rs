//! A network cut, for real: one worker runs in a network namespace of its own, joined to
//! this one by a veth pair, and the link is taken down mid-batch (packets vanish, nothing
//! closes). The ventilator must declare the worker gone by heartbeat and hand its tasks on.
//! Needs root and iproute2; CI sets CONQUER_REQUIRE_NETNS=1 so that a machine without them
//! fails rather than skips.

use crate::util::{self, Proc};
use std::time::Duration;

#[test]
fn a_worker_cut_off_by_the_network_is_declared_gone_and_nothing_is_lost() {
    let Some(ns) = util::Netns::create_or_skip() else {
        return;
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
            // On purpose: this test is about the network, not who may join.
            "--insecure",
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
        "--insecure",
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

    sink.event("batch");
    std::thread::sleep(Duration::from_millis(200)); // the scenario: cut mid-batch
    ns.link(false);
    vent.event_where("worker", |e| e["name"] == "cut" && e["state"] == "silent");
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
