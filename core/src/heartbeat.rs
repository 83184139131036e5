//! Liveness settings shared by every role (the Paranoid Pirate pattern): how often a peer
//! says it is alive, and how much silence makes it gone. No sockets, no clock here.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often each side says it is alive.
    pub interval: Duration,
    /// How many intervals of silence make a peer gone.
    pub liveness: u32,
}

impl Heartbeat {
    /// Silence after which a peer is declared gone.
    pub fn timeout(&self) -> Duration {
        self.interval * self.liveness
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_millis(500),
            liveness: 5,
        }
    }
}

/// Worker names enter from the network and the command line and end up in logs, reports
/// and results files: 1 to 255 bytes of printable text, no control characters (no line
/// breaks, no terminal escapes). Returns why a name is refused.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!(
            "worker name must be 1 to 255 bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "worker name {:?} holds the control character {:?}; use printable text",
            name.escape_debug().to_string(),
            c
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_and_bounded() {
        assert!(check_name("gpu-box-7").is_ok());
        assert!(check_name("wörker ①").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(256)).is_err());
        assert!(check_name("line1\nline2").is_err());
        assert!(check_name("evil\u{1b}[2J").is_err());
    }
}
