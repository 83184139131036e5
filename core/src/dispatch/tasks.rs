//! The task table: every task (or carved chunk) of the batch, its state and its owner,
//! the queue of those waiting to go out, and the counts kept from them. Every change of
//! state goes through a method here, so the counts cannot drift from the states
//! ([`TaskTable::audit`] recounts them; a property test drives random transitions).
//!
//! It knows nothing of workers beyond their ids, nor of credit, the sink or the end game:
//! the dispatcher decides which transition happens, the table keeps the books. Its methods
//! are `#[inline]`: they are the hot path of every hand-out, and a call across codegen
//! units costs the simulate suite about a quarter more CPU per task.

use super::{TaskState, WorkerId};
use crate::batch::Task;
use std::collections::VecDeque;

/// The owner of a task nobody holds.
pub(super) const NO_OWNER: WorkerId = WorkerId::MAX;

pub(super) struct TaskTable {
    tasks: Vec<Task>,
    state: Vec<TaskState>,
    /// Who holds each task (`Assigned`), or reported it (`Reported`; [`NO_OWNER`] for a
    /// task given up on).
    owner: Vec<WorkerId>,
    /// Task ids to hand out; requeued tasks go to the front. May hold ids no longer
    /// pending (held through a late result, handed out as a copy): those are skipped when
    /// reached.
    queue: VecDeque<u32>,
    /// Tasks `Pending` or `Requeued`, and their workloads summed.
    pending: usize,
    pending_ms: u64,
    /// Tasks `Held`.
    held: usize,
}

impl TaskTable {
    /// Every task pending, queued in `order` (each id once).
    pub(super) fn new(tasks: Vec<Task>, order: &[u32]) -> TaskTable {
        let n = tasks.len();
        TaskTable {
            pending: n,
            pending_ms: tasks.iter().map(|t| u64::from(t.workload_ms)).sum(),
            tasks,
            state: vec![TaskState::Pending; n],
            owner: vec![NO_OWNER; n],
            queue: order.iter().copied().collect(),
            held: 0,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    #[inline]
    pub(super) fn task(&self, index: usize) -> &Task {
        &self.tasks[index]
    }

    #[inline]
    pub(super) fn get(&self, index: usize) -> Option<&Task> {
        self.tasks.get(index)
    }

    #[inline]
    pub(super) fn workload_ms(&self, index: usize) -> u64 {
        u64::from(self.tasks[index].workload_ms)
    }

    #[inline]
    pub(super) fn state(&self, index: usize) -> TaskState {
        self.state[index]
    }

    #[inline]
    pub(super) fn owner(&self, index: usize) -> WorkerId {
        self.owner[index]
    }

    /// Whether `slot` holds the task (`Assigned` to it).
    #[inline]
    pub(super) fn assigned_to(&self, index: usize, slot: WorkerId) -> bool {
        self.state[index] == TaskState::Assigned && self.owner[index] == slot
    }

    /// Whether `slot` holds the task or reported it and the sink does not hold it yet.
    #[inline]
    pub(super) fn outstanding_with(&self, index: usize, slot: WorkerId) -> bool {
        self.owner[index] == slot
            && matches!(self.state[index], TaskState::Assigned | TaskState::Reported)
    }

    #[inline]
    pub(super) fn is_pending(&self, index: usize) -> bool {
        matches!(self.state[index], TaskState::Pending | TaskState::Requeued)
    }

    #[inline]
    pub(super) fn pending(&self) -> usize {
        self.pending
    }

    #[inline]
    pub(super) fn pending_ms(&self) -> u64 {
        self.pending_ms
    }

    #[inline]
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Entries in the queue, stale ones included.
    #[inline]
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A new task (a carved chunk), pending at the front of the queue; its index.
    #[inline]
    pub(super) fn add(&mut self, task: Task) -> u32 {
        let id = self.tasks.len() as u32;
        self.pending += 1;
        self.pending_ms += u64::from(task.workload_ms);
        self.tasks.push(task);
        self.state.push(TaskState::Pending);
        self.owner.push(NO_OWNER);
        self.queue.push_front(id);
        id
    }

    /// The first pending task in the queue that `skip` does not pass over (stale entries
    /// are dropped on the way), left in the queue.
    #[inline]
    pub(super) fn peek(&mut self, skip: impl Fn(u32) -> bool) -> Option<u32> {
        while let Some(&id) = self.queue.front() {
            if self.is_pending(id as usize) && !skip(id) {
                return Some(id);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Takes the front of the queue off (the task [`peek`](Self::peek) gave is going out).
    #[inline]
    pub(super) fn pop(&mut self) {
        self.queue.pop_front();
    }

    /// A pending task goes to `slot` (taken from the queue by [`pop`](Self::pop), or from
    /// elsewhere, as a copy is); whether it had gone out before.
    #[inline]
    pub(super) fn assign(&mut self, index: usize, slot: WorkerId) -> bool {
        debug_assert!(
            self.is_pending(index),
            "assigning task {index}, not pending"
        );
        let again = self.state[index] == TaskState::Requeued;
        self.pending -= 1;
        self.pending_ms -= self.workload_ms(index);
        self.state[index] = TaskState::Assigned;
        self.owner[index] = slot;
        again
    }

    /// A task held by one worker is held by `slot` now (the end game's takeover).
    #[inline]
    pub(super) fn transfer(&mut self, index: usize, slot: WorkerId) {
        debug_assert_eq!(self.state[index], TaskState::Assigned);
        self.owner[index] = slot;
    }

    /// A chunk out with a worker is its first `items` now (the worker gave up the rest);
    /// its workload shrinks in proportion.
    #[inline]
    pub(super) fn shorten(&mut self, index: usize, items: u32) {
        debug_assert_eq!(self.state[index], TaskState::Assigned);
        let task = &mut self.tasks[index];
        debug_assert!(items > 0 && items < task.items);
        let ms = u64::from(task.workload_ms) * u64::from(items) / u64::from(task.items.max(1));
        task.workload_ms = ms.max(1) as u32;
        task.items = items;
    }

    /// Its holder says it is done; it is finished once the sink holds it.
    #[inline]
    pub(super) fn report(&mut self, index: usize) {
        debug_assert_eq!(self.state[index], TaskState::Assigned);
        self.state[index] = TaskState::Reported;
    }

    /// Given up on: it waits, nobody's, for the sink to count it failed.
    #[inline]
    pub(super) fn give_up(&mut self, index: usize) {
        self.state[index] = TaskState::Reported;
        self.owner[index] = NO_OWNER;
    }

    /// Out again, at the front of the queue: its worker left, failed it, or its result was
    /// lost with a sink. `again` says whether it counts as handed out before (a task that
    /// bounced off a full queue goes back as it was).
    #[inline]
    pub(super) fn requeue(&mut self, index: usize, again: bool) {
        if !self.is_pending(index) {
            self.pending += 1;
            self.pending_ms += self.workload_ms(index);
        }
        if self.state[index] == TaskState::Held {
            self.held -= 1;
        }
        self.state[index] = if again {
            TaskState::Requeued
        } else {
            TaskState::Pending
        };
        self.owner[index] = NO_OWNER;
        self.queue.push_front(index as u32);
    }

    /// The sink holds it: finished. The state it was in before.
    #[inline]
    pub(super) fn hold(&mut self, index: usize) -> TaskState {
        let was = self.state[index];
        match was {
            TaskState::Held => return was,
            TaskState::Pending | TaskState::Requeued => {
                self.pending -= 1;
                self.pending_ms -= self.workload_ms(index);
            }
            TaskState::Assigned | TaskState::Reported => {}
        }
        self.state[index] = TaskState::Held;
        self.held += 1;
        was
    }

    /// A restarted sink: every task believed held is only reported until it says again.
    pub(super) fn doubt_held(&mut self) {
        for s in self.state.iter_mut() {
            if *s == TaskState::Held {
                *s = TaskState::Reported;
            }
        }
        self.held = 0;
    }

    /// Indexes of the tasks in `state`.
    #[cfg(test)]
    pub(super) fn in_state(&self, state: TaskState) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(move |&i| self.state[i] == state)
    }

    /// Recounts the books from the states: the counts, every pending task queued (here, or
    /// where `queued_elsewhere` says: a copy waits in the dispatcher's replicas), owners
    /// only where someone holds or reported a task.
    #[cfg(test)]
    pub(super) fn audit(&self, queued_elsewhere: impl Fn(u32) -> bool) -> Result<(), String> {
        let (mut pending, mut pending_ms, mut held) = (0, 0, 0);
        let mut queued = vec![false; self.len()];
        for &id in &self.queue {
            match queued.get_mut(id as usize) {
                Some(q) => *q = true,
                None => return Err(format!("task {id} queued, of {}", self.len())),
            }
        }
        for (i, &queued) in queued.iter().enumerate() {
            match self.state[i] {
                TaskState::Pending | TaskState::Requeued => {
                    pending += 1;
                    pending_ms += self.workload_ms(i);
                    if !queued && !queued_elsewhere(i as u32) {
                        return Err(format!("task {i} is pending and not queued"));
                    }
                    if self.owner[i] != NO_OWNER {
                        return Err(format!("task {i} is pending, owned by {}", self.owner[i]));
                    }
                }
                TaskState::Assigned if self.owner[i] == NO_OWNER => {
                    return Err(format!("task {i} is assigned to nobody"))
                }
                TaskState::Held => held += 1,
                _ => {}
            }
        }
        if (pending, pending_ms, held) != (self.pending, self.pending_ms, self.held) {
            return Err(format!(
                "task counts drifted: pending {pending} vs {}, pending_ms {pending_ms} vs {}, \
                 held {held} vs {}",
                self.pending, self.pending_ms, self.held
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Add(u32),
        HandOut(WorkerId),
        Transfer(usize, WorkerId),
        Report(usize),
        GiveUp(usize),
        Requeue(usize, bool),
        Hold(usize),
        DoubtHeld,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => (1u32..100).prop_map(Step::Add),
            3 => (0u32..4).prop_map(Step::HandOut),
            1 => (0usize..40, 0u32..4).prop_map(|(i, w)| Step::Transfer(i, w)),
            2 => (0usize..40).prop_map(Step::Report),
            1 => (0usize..40).prop_map(Step::GiveUp),
            1 => (0usize..40, any::<bool>()).prop_map(|(i, a)| Step::Requeue(i, a)),
            2 => (0usize..40).prop_map(Step::Hold),
            1 => Just(Step::DoubtHeld),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// Transitions as the dispatcher makes them (each from a state it makes it from):
        /// the books always agree with the states, and a task handed out is one the queue
        /// offered.
        #[test]
        fn the_books_agree_with_the_states_after_any_transitions(
            workloads in proptest::collection::vec(1u32..100, 0..20),
            steps in proptest::collection::vec(step(), 0..120),
        ) {
            let tasks: Vec<Task> = workloads
                .iter()
                .enumerate()
                .map(|(id, &workload_ms)| Task { id: id as u32, workload_ms, ..Task::default() })
                .collect();
            let order: Vec<u32> = (0..tasks.len() as u32).rev().collect();
            let mut t = TaskTable::new(tasks, &order);
            t.audit(|_| false).map_err(TestCaseError::fail)?;
            for step in steps {
                let n = t.len();
                match step {
                    Step::Add(workload_ms) => {
                        let id = t.add(Task { id: n as u32, workload_ms, ..Task::default() });
                        prop_assert_eq!(id as usize, n);
                        prop_assert_eq!(t.peek(|_| false), Some(id));
                    }
                    Step::HandOut(slot) => {
                        if let Some(id) = t.peek(|_| false) {
                            prop_assert!(t.is_pending(id as usize));
                            t.pop();
                            let was = t.state(id as usize);
                            let again = t.assign(id as usize, slot);
                            prop_assert_eq!(again, was == TaskState::Requeued);
                            prop_assert!(t.assigned_to(id as usize, slot));
                        } else {
                            prop_assert_eq!(t.pending(), 0);
                        }
                    }
                    Step::Transfer(i, slot) if i < n && t.state(i) == TaskState::Assigned => {
                        t.transfer(i, slot);
                        prop_assert!(t.assigned_to(i, slot));
                    }
                    Step::Report(i) if i < n && t.state(i) == TaskState::Assigned => {
                        let owner = t.owner(i);
                        t.report(i);
                        prop_assert!(t.outstanding_with(i, owner));
                    }
                    Step::GiveUp(i) if i < n && t.state(i) == TaskState::Assigned => {
                        t.give_up(i);
                        prop_assert_eq!(t.owner(i), NO_OWNER);
                    }
                    Step::Requeue(i, again)
                        if i < n && matches!(t.state(i), TaskState::Assigned | TaskState::Reported) =>
                    {
                        t.requeue(i, again);
                        prop_assert!(t.is_pending(i));
                    }
                    Step::Hold(i) if i < n => {
                        let held = t.held();
                        let was = t.hold(i);
                        prop_assert_eq!(t.held(), held + usize::from(was != TaskState::Held));
                    }
                    Step::DoubtHeld => {
                        t.doubt_held();
                        prop_assert_eq!(t.held(), 0);
                        prop_assert_eq!(t.in_state(TaskState::Held).count(), 0);
                    }
                    _ => {}
                }
                t.audit(|_| false).map_err(TestCaseError::fail)?;
            }
        }
    }

    #[test]
    fn a_drifted_count_is_found() {
        let tasks = vec![Task {
            id: 0,
            workload_ms: 5,
            ..Task::default()
        }];
        let mut t = TaskTable::new(tasks, &[0]);
        t.pending_ms += 1;
        assert!(t
            .audit(|_| false)
            .unwrap_err()
            .contains("pending_ms 5 vs 6"));
        t.pending_ms -= 1;
        t.queue.clear();
        assert!(t
            .audit(|_| false)
            .unwrap_err()
            .contains("pending and not queued"));
        assert_eq!(t.audit(|id| id == 0), Ok(()));
    }
}
