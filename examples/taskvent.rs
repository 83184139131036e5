//! Task ventilator, after the ZeroMQ Guide's taskvent: binds a PUSH socket on tcp://*:5557,
//! sends a batch of 100 tasks (each a workload in msec, as ASCII) to the workers that
//! connect to it, after telling the sink on tcp://localhost:5558 that the batch starts.
//!
//! Usage: taskvent [TASKS_BIND] [SINK]   (defaults: the Guide's endpoints)

use rand::Rng;
use std::io::{BufRead, Write};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "tcp://*:5557".into());
    let sink_endpoint = args.next().unwrap_or_else(|| "tcp://localhost:5558".into());

    let context = zmq::Context::new();
    // Socket to send messages on
    let sender = context.socket(zmq::PUSH)?;
    sender.bind(&bind)?;
    // Socket to send the start-of-batch message on
    let sink = context.socket(zmq::PUSH)?;
    sink.connect(&sink_endpoint)?;

    print!("Press Enter when the workers are ready: ");
    std::io::stdout().flush()?;
    std::io::stdin().lock().read_line(&mut String::new())?;
    println!("Sending tasks to workers...");

    // The first message is "0" and signals start of batch
    sink.send("0", 0)?;

    // Send 100 tasks
    let mut rng = rand::rng();
    let mut total_msec = 0;
    for _ in 0..100 {
        // Random workload from 1 to 100 msecs
        let workload: u32 = rng.random_range(1..=100);
        total_msec += workload;
        sender.send(workload.to_string().as_str(), 0)?;
    }
    println!("Total expected cost: {total_msec} msec");
    std::thread::sleep(Duration::from_secs(1)); // Give 0MQ time to deliver
    Ok(())
}
