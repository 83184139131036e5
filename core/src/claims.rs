//! Names on a farm: one rule for the ventilator and the sink. A worker's name is its
//! identity in logs, reports and results; two live processes must not share one. A
//! newcomer whose name a live worker of another session holds is neither admitted nor
//! refused at once: the holder is sent a message, and its connection answers. If it is
//! gone (the send comes back unreachable), the newcomer takes the name; if not, by the next
//! event the newcomer is refused with [`name_taken`]. A reconnect of the same process (the
//! same session) keeps its name.
//!
//! Each machine keeps its own table of who holds which name (the dispatcher by slot, the
//! collector by routing id); [`Claims`] keeps the newcomers waiting on a holder, and
//! [`clashes`] decides who waits.

use crate::protocol::WorkerInfo;

/// A newcomer waiting on the holder `old` of its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim<K> {
    pub old: K,
    pub routing_id: Vec<u8>,
    pub info: WorkerInfo,
}

/// Newcomers waiting on the holders of their names, until the holders' connections answer.
#[derive(Debug, Clone)]
pub struct Claims<K> {
    waiting: Vec<Claim<K>>,
}

impl<K> Default for Claims<K> {
    fn default() -> Self {
        Claims {
            waiting: Vec::new(),
        }
    }
}

/// The holder of a name, as the machine that keeps it sees it.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    pub session: u64,
    pub routing_id: &'a [u8],
    /// Alive (the dispatcher's belief) or heard from within a heartbeat timeout (the
    /// collector's).
    pub live: bool,
}

/// Whether a newcomer (`session`, `routing_id`) must wait on `holder` of its name: the
/// holder is live and another process. The same session is the same worker reconnecting.
pub fn clashes(holder: Holder<'_>, session: u64, routing_id: &[u8]) -> bool {
    holder.live && holder.session != session && holder.routing_id != routing_id
}

/// Why a newcomer is refused once its name's holder answered: the same words from either
/// role, naming the fix.
pub fn name_taken(name: &str, role: &str, endpoint: &str) -> String {
    format!(
        "another worker named {name:?} is already connected to the {role} at {endpoint}; give \
         each worker its own --name (the default, host-pid-N, is unique)"
    )
}

impl<K: PartialEq> Claims<K> {
    /// Whether this connection is waiting already (its first greeting is being settled).
    pub fn is_waiting(&self, routing_id: &[u8]) -> bool {
        self.waiting.iter().any(|c| c.routing_id == routing_id)
    }

    /// A newcomer waits on `old`.
    pub fn wait(&mut self, old: K, routing_id: Vec<u8>, info: WorkerInfo) {
        self.waiting.push(Claim {
            old,
            routing_id,
            info,
        });
    }

    /// The holder `old` is gone: the newcomers that waited on it, to admit.
    pub fn holder_gone(&mut self, old: &K) -> Vec<Claim<K>> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].old == *old {
                gone.push(self.waiting.swap_remove(i));
            } else {
                i += 1;
            }
        }
        gone
    }

    /// The holders still waited on answered by now (no unreachable came back): every
    /// newcomer waiting, to refuse.
    pub fn settle(&mut self) -> Vec<Claim<K>> {
        std::mem::take(&mut self.waiting)
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(name: &str, session: u64) -> WorkerInfo {
        WorkerInfo {
            name: name.into(),
            session,
            backend: "sleep".into(),
            adapter: String::new(),
            window_hint: 1,
            codecs: 0,
            fill: 0,
        }
    }

    #[test]
    fn a_reconnect_of_the_same_worker_keeps_its_name_and_a_namesake_waits() {
        let holder = Holder {
            session: 7,
            routing_id: b"w/7",
            live: true,
        };
        assert!(!clashes(holder, 7, b"w/7-again"), "the same session");
        assert!(clashes(holder, 8, b"w/8"), "another process");
        assert!(
            !clashes(
                Holder {
                    live: false,
                    ..holder
                },
                8,
                b"w/8"
            ),
            "a gone holder"
        );
        assert!(!clashes(holder, 8, b"w/7"), "the same connection");
        assert!(name_taken("w", "sink", "tcp://h:5558").contains("--name"));
    }

    proptest! {
        /// Whatever the order of greetings, losses and settlements, each newcomer ends
        /// exactly once: admitted when its holder is gone, or refused when it answered.
        #[test]
        fn every_claim_ends_once(
            ops in proptest::collection::vec((0u8..3, 0u8..4, 0u8..6), 0..100),
        ) {
            let mut claims: Claims<u8> = Claims::default();
            let mut waiting = std::collections::BTreeSet::new();
            let mut ended = std::collections::BTreeSet::new();
            for (op, holder, newcomer) in ops {
                let rid = vec![newcomer];
                match op {
                    0 if !claims.is_waiting(&rid) && !ended.contains(&newcomer) => {
                        claims.wait(holder, rid, info("w", u64::from(newcomer)));
                        waiting.insert(newcomer);
                    }
                    1 => {
                        for c in claims.holder_gone(&holder) {
                            prop_assert_eq!(c.old, holder);
                            prop_assert!(waiting.remove(&c.routing_id[0]));
                            prop_assert!(ended.insert(c.routing_id[0]));
                        }
                    }
                    2 => {
                        for c in claims.settle() {
                            prop_assert!(waiting.remove(&c.routing_id[0]));
                            prop_assert!(ended.insert(c.routing_id[0]));
                        }
                        prop_assert!(claims.is_empty());
                    }
                    _ => {}
                }
                for &n in &waiting {
                    prop_assert!(claims.is_waiting(&[n]));
                }
            }
        }
    }
}
