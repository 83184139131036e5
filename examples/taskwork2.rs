//! Task worker with kill signalling, after the ZeroMQ Guide's taskwork2: like taskwork, and
//! also subscribes to the sink's controller on tcp://localhost:5559; polls both sockets and
//! exits on any controller message.
//!
//! Usage: taskwork2 [VENTILATOR] [SINK] [CONTROLLER]

use std::io::Write;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ventilator = args.next().unwrap_or_else(|| "tcp://localhost:5557".into());
    let sink = args.next().unwrap_or_else(|| "tcp://localhost:5558".into());
    let controller_endpoint = args.next().unwrap_or_else(|| "tcp://localhost:5559".into());

    let context = zmq::Context::new();
    let receiver = context.socket(zmq::PULL)?;
    receiver.connect(&ventilator)?;
    let sender = context.socket(zmq::PUSH)?;
    sender.connect(&sink)?;
    // Socket for control input
    let controller = context.socket(zmq::SUB)?;
    controller.connect(&controller_endpoint)?;
    controller.set_subscribe(b"")?;

    // Process messages from either socket
    loop {
        let mut items = [
            receiver.as_poll_item(zmq::POLLIN),
            controller.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, -1)?;
        if items[0].is_readable() {
            let string = receiver.recv_string(0)?.unwrap_or_default();
            let msec: u64 = string.trim().parse().unwrap_or(0);
            std::thread::sleep(Duration::from_millis(msec)); // Do the work
            sender.send("", 0)?; // Send results to sink
            print!("."); // Simple progress indicator for the viewer
            std::io::stdout().flush()?;
        }
        // Any waiting controller command acts as 'KILL'
        if items[1].is_readable() {
            break; // Exit loop
        }
    }
    println!();
    Ok(())
}
