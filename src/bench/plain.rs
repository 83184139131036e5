//! The Guide's plain PUSH/PULL pipeline, the baseline the throughput and kernels suites
//! measure conquer against: a PUSH ventilator, worker threads that PULL each message and
//! PUSH it on unchanged, and a PULL sink, all on loopback. No credit, no heartbeats, no
//! results file: what libzmq alone costs for the same messages over the same two hops.

use std::time::{Duration, Instant};

/// One run of the plain pipeline.
pub struct Plain {
    /// Bytes in each message (0: the zero-work tasks of the throughput suite).
    pub payload: usize,
    pub tasks: u32,
    pub workers: u32,
    /// Queues without a high-water mark, and every message sent before the first is
    /// received (the throughput suite); otherwise libzmq's default queues, and a sender
    /// thread beside the receiving loop, as a ventilator beside its sink (the payloads).
    pub unbounded: bool,
}

impl Plain {
    /// Times first send to last receipt, once every worker has shown it is connected.
    pub fn run(&self) -> anyhow::Result<Duration> {
        let ctx = zmq::Context::new();
        let vent = ctx.socket(zmq::PUSH)?;
        let sink = ctx.socket(zmq::PULL)?;
        if self.unbounded {
            vent.set_sndhwm(0)?;
            sink.set_rcvhwm(0)?;
        }
        let bound = |socket: &zmq::Socket| -> anyhow::Result<String> {
            socket.bind("tcp://127.0.0.1:*")?;
            socket
                .get_last_endpoint()?
                .map_err(|_| anyhow::anyhow!("bad endpoint"))
        };
        let (vent_ep, sink_ep) = (bound(&vent)?, bound(&sink)?);
        let mut threads = Vec::new();
        for _ in 0..self.workers {
            let ctx = ctx.clone();
            let (vent_ep, sink_ep) = (vent_ep.clone(), sink_ep.clone());
            threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
                let from = ctx.socket(zmq::PULL)?;
                from.connect(&vent_ep)?;
                let to = ctx.socket(zmq::PUSH)?;
                to.connect(&sink_ep)?;
                to.send(&b"ready"[..], 0)?;
                loop {
                    let task = from.recv_bytes(0)?;
                    if task == b"END" {
                        return Ok(());
                    }
                    to.send(task, 0)?;
                }
            }));
        }
        for _ in 0..self.workers {
            sink.recv_bytes(0)?;
        }
        // Each worker's PULL may still be completing its handshake with the PUSH side; a
        // short grace keeps the first burst from going to one worker only.
        std::thread::sleep(Duration::from_millis(100));
        let (tasks, workers, payload) = (self.tasks, self.workers, self.payload);
        let send_all = move |vent: &zmq::Socket| -> anyhow::Result<()> {
            let message = vec![0x5au8; payload];
            for _ in 0..tasks {
                vent.send(&message[..], 0)?;
            }
            Ok(())
        };
        let start = Instant::now();
        let elapsed = if self.unbounded {
            send_all(&vent)?;
            for _ in 0..tasks {
                sink.recv_bytes(0)?;
            }
            let elapsed = start.elapsed();
            for _ in 0..workers {
                vent.send(&b"END"[..], 0)?;
            }
            elapsed
        } else {
            // The sender owns its socket (a socket is used by one thread at a time).
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let sender = std::thread::spawn(move || -> anyhow::Result<()> {
                send_all(&vent)?;
                let _ = done_rx.recv();
                for _ in 0..workers {
                    vent.send(&b"END"[..], 0)?;
                }
                Ok(())
            });
            for _ in 0..tasks {
                sink.recv_bytes(0)?;
            }
            let elapsed = start.elapsed();
            let _ = done_tx.send(());
            sender
                .join()
                .map_err(|_| anyhow::anyhow!("plain sender panicked"))??;
            elapsed
        };
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("plain worker panicked"))??;
        }
        Ok(elapsed)
    }
}
