//! Task sink, after the ZeroMQ Guide's tasksink: binds PULL on tcp://*:5558, waits for the
//! start of the batch, collects 100 results and prints the total elapsed time.
//!
//! Usage: tasksink [RESULTS_BIND]

use std::io::Write;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://*:5558".into());

    // Prepare our context and socket
    let context = zmq::Context::new();
    let receiver = context.socket(zmq::PULL)?;
    receiver.bind(&bind)?;

    // Wait for start of batch
    receiver.recv_bytes(0)?;
    // Start our clock now
    let start = Instant::now();

    // Process 100 confirmations
    for task_nbr in 0..100 {
        receiver.recv_bytes(0)?;
        print!("{}", if task_nbr % 10 == 0 { ":" } else { "." });
        std::io::stdout().flush()?;
    }
    // Calculate and report duration of batch
    println!("\nTotal elapsed time: {} msec", start.elapsed().as_millis());
    Ok(())
}
