//! Task worker, after the ZeroMQ Guide's taskwork: connects PULL to tcp://localhost:5557
//! for tasks and PUSH to tcp://localhost:5558 for results; sleeps each task's workload
//! in msec and sends an empty result.
//!
//! Usage: taskwork [VENTILATOR] [SINK]

use std::io::Write;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ventilator = args.next().unwrap_or_else(|| "tcp://localhost:5557".into());
    let sink = args.next().unwrap_or_else(|| "tcp://localhost:5558".into());

    let context = zmq::Context::new();
    // Socket to receive messages on
    let receiver = context.socket(zmq::PULL)?;
    receiver.connect(&ventilator)?;
    // Socket to send messages to
    let sender = context.socket(zmq::PUSH)?;
    sender.connect(&sink)?;

    // Process tasks forever
    loop {
        let string = receiver.recv_string(0)?.unwrap_or_default();
        print!("{string}."); // Simple progress indicator for the viewer
        std::io::stdout().flush()?;
        let msec: u64 = string.trim().parse().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(msec)); // Do the work
        sender.send("", 0)?; // Send results to sink
    }
}
