//! Copies the sink asks for (`--replicate`): queued apart, handed to a worker whose copy
//! the sink does not have, and to the others only when no such worker is left.

use super::*;

impl Dispatcher {
    /// The sink wants a task run once more, by a worker not in `exclude` (`--replicate`):
    /// unless such a worker runs it already, it goes to the replicas' queue, which a
    /// worker named in `exclude` takes from only when no other live worker could.
    /// Idempotent: the sink repeats itself until it holds the task.
    pub(super) fn again(
        &mut self,
        now: Instant,
        id: u32,
        first: u64,
        items: u32,
        exclude: Vec<String>,
    ) {
        let index = if self.carver.is_some() {
            match self.chunk_at.get(&first) {
                Some(&id) if self.tasks.task(id as usize).items == items => id as usize,
                _ => {
                    let why = format!(
                        "asked to run items {first}..{} again, not a chunk",
                        first + u64::from(items)
                    );
                    self.reject_at(now, "sink", why);
                    return;
                }
            }
        } else if (id as usize) < self.len() {
            id as usize
        } else {
            let why = format!(
                "asked to run task {id} of a {}-task batch again",
                self.len()
            );
            self.reject_at(now, "sink", why);
            return;
        };
        let excluded = |slot: u32| {
            self.workers
                .get(slot as usize)
                .is_some_and(|w| exclude.contains(&w.info.name))
        };
        let requeue = match self.tasks.state(index) {
            TaskState::Held => false,
            TaskState::Pending | TaskState::Requeued => false,
            TaskState::Assigned => excluded(self.tasks.owner(index)),
            TaskState::Reported => {
                self.tasks.owner(index) == NO_OWNER || excluded(self.tasks.owner(index))
            }
        };
        self.exclude.insert(index as u32, exclude);
        if requeue {
            if self.tasks.state(index) == TaskState::Assigned {
                let owner = self.tasks.owner(index);
                self.release(owner, index);
            }
            self.requeue(index);
        } else if matches!(
            self.tasks.state(index),
            TaskState::Pending | TaskState::Requeued
        ) {
            // Waiting in the main queue (its worker was lost): moved to the replicas'.
            self.queue_replica(index as u32);
        }
    }

    /// A copy the sink asked for waits in `replicas`; its entry in the main queue, if any,
    /// is skipped there. Workers waiting in the tail look again: one may have gone there
    /// idle because every copy then queued excluded it, and this one may not.
    pub(super) fn queue_replica(&mut self, index: u32) {
        if self.replica_set.insert(index) {
            self.replicas.push_back(index);
            self.wake_waiting();
        }
    }

    /// A replica `slot` may run now, with its place in the queue: among the first few, one
    /// it is not excluded from; else the first, if no live, unstalled worker is free of its
    /// exclusion. Drops stale entries from the front.
    pub(super) fn replica_for(&mut self, slot: usize) -> Option<(usize, u32)> {
        while let Some(&index) = self.replicas.front() {
            if matches!(
                self.tasks.state(index as usize),
                TaskState::Pending | TaskState::Requeued
            ) {
                break;
            }
            self.replicas.pop_front();
            self.replica_set.remove(&index);
        }
        let name = &self.workers[slot].info.name;
        let excluded = |index: u32| {
            self.exclude
                .get(&index)
                .is_some_and(|names| names.contains(name))
        };
        let live = |index: usize| {
            matches!(
                self.tasks.state(index),
                TaskState::Pending | TaskState::Requeued
            )
        };
        if let Some((pos, &index)) = self
            .replicas
            .iter()
            .enumerate()
            .take(REPLICA_SCAN)
            .find(|&(_, &index)| live(index as usize) && !excluded(index))
        {
            return Some((pos, index));
        }
        let &first = self.replicas.front()?;
        let exclude = self.exclude.get(&first).map_or(&[][..], Vec::as_slice);
        // A worker waiting for the sink to catch up will take it soon; a stalled one
        // (its task backed up, it does not report) may never.
        let someone_else = self.workers.iter().any(|worker| {
            worker.alive
                && !worker.declined
                && !worker.stalled
                && !exclude.contains(&worker.info.name)
        });
        (!someone_else).then_some((0, first))
    }
}
