//! Task sink with kill signalling, after the ZeroMQ Guide's tasksink2: like tasksink, and
//! when the batch is done it publishes "KILL" on tcp://*:5559 so the workers exit.
//!
//! Usage: tasksink2 [RESULTS_BIND] [CONTROLLER_BIND]

use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "tcp://*:5558".into());
    let controller_bind = args.next().unwrap_or_else(|| "tcp://*:5559".into());

    let context = zmq::Context::new();
    // Socket to receive messages on
    let receiver = context.socket(zmq::PULL)?;
    receiver.bind(&bind)?;
    // Socket for worker control
    let controller = context.socket(zmq::PUB)?;
    controller.bind(&controller_bind)?;

    // Wait for start of batch
    receiver.recv_bytes(0)?;
    let start = Instant::now();

    // Process 100 confirmations
    for task_nbr in 0..100 {
        receiver.recv_bytes(0)?;
        print!("{}", if task_nbr % 10 == 0 { ":" } else { "." });
        std::io::stdout().flush()?;
    }
    println!("\nTotal elapsed time: {} msec", start.elapsed().as_millis());

    // Send kill signal to workers
    controller.send("KILL", 0)?;
    std::thread::sleep(Duration::from_secs(1)); // Give 0MQ time to deliver
    Ok(())
}
