//! The sink's side of dispatch: what it holds (task ids, or a job's item ranges), its
//! acknowledgement, its restarts and the resync after one, and its completion.

use super::*;

impl Dispatcher {
    /// The sink holds all it needs. A divisible job may end with chunks still out (a
    /// search stops at its hits; a backup's twin): the workers are told at once, and the
    /// batch completes once none holds a chunk, so the report can say how long that took.
    pub(super) fn sink_complete(&mut self, now: Instant, out: &mut Vec<Command>) {
        let out_there = self.workers.iter().any(|w| w.alive && w.assigned > 0);
        if self.carver.is_none() || !out_there {
            // A job that ended early with no chunk out: every worker was idle already.
            let early = self.carver.as_ref().is_some_and(|c| c.left() > 0);
            if early {
                self.drained = Some(Duration::ZERO);
            }
            self.complete(out);
            return;
        }
        log::info!("the job is done with chunks still out; telling the workers to abandon them");
        self.end_workers(out);
        self.phase = Phase::Draining { since: now };
        self.timers
            .set(Timer::Drain, now + self.config.heartbeat.timeout());
    }

    // ---- the sink -----------------------------------------------------------------------

    pub(super) fn on_sink(&mut self, now: Instant, message: Message, out: &mut Vec<Command>) {
        let batch_id = self.config.batch_id;
        let announced = !matches!(self.phase, Phase::Waiting);
        if announced {
            self.heard_from_sink = now;
            if self.sink_silence_said {
                log::info!("the sink is answering again");
                self.sink_silence_said = false;
            }
        }
        match message {
            Message::Refused { reason, .. } if announced => {
                let sink = self.config.sink.clone();
                self.stop(Stopped::SinkRefused { sink, reason }, out);
            }
            Message::BatchAck { batch, held } if announced && batch == batch_id => {
                match self.phase {
                    Phase::Announcing { .. } => {
                        if held > 0 && !self.config.resume {
                            self.stop(Stopped::SinkHoldsResults { held, batch }, out);
                            return;
                        }
                        if held > 0 {
                            log::warn!(
                                "resuming batch {batch:016x}: the sink holds {held} results"
                            );
                            self.note(crate::events::Note::Batch {
                                batch: crate::events::batch_name(batch),
                                tasks: self.len() as u64,
                                held: u64::from(held),
                            });
                        }
                        self.phase = Phase::Announcing {
                            holding: Some(held as usize),
                        };
                    }
                    _ => self.sink_restarted(now, held),
                }
            }
            Message::Held { batch, ids }
                if announced && batch == batch_id && self.carver.is_none() =>
            {
                self.mark_held(now, &ids)
            }
            Message::HeldItems { batch, ranges }
                if announced && batch == batch_id && self.carver.is_some() =>
            {
                self.held_items(now, &ranges)
            }
            Message::Complete { batch }
                if batch == batch_id && self.phase == Phase::Dispatching =>
            {
                self.sink_complete(now, out)
            }
            Message::Heartbeat { batch } if announced && batch == batch_id => {}
            Message::Again {
                batch,
                id,
                first,
                items,
                exclude,
            } if announced && batch == batch_id => self.again(now, id, first, items, exclude),
            Message::Quarantine {
                batch,
                worker,
                reason,
            } if announced && batch == batch_id => {
                let slot = self.by_name.get(&worker).copied().or_else(|| {
                    (0..self.workers.len() as WorkerId)
                        .find(|&w| self.workers[w as usize].info.name == worker)
                });
                if let Some(slot) = slot.filter(|&w| !self.workers[w as usize].declined) {
                    log::warn!(
                        "worker {} is quarantined for this batch: {}; it gets none of its tasks",
                        printable(&worker),
                        printable(&reason)
                    );
                    self.note_worker(slot, "quarantined", None);
                    self.set_aside(slot, now, &reason, out);
                }
            }
            // The live view's: nothing to dispatch.
            Message::SinkSide { batch, side } if batch == batch_id => {
                self.observe(Observed::SinkSide(side))
            }
            Message::SinkSide { .. } => {}
            other => self.reject_at(
                now,
                "sink",
                format!(
                    "unexpected {} message (batch mismatch or wrong direction)",
                    other.kind_name()
                ),
            ),
        }
    }

    /// The sink acknowledged the batch again: it restarted and holds only `held` results
    /// (from its results file, or none). Everything we believed held is in doubt until the
    /// sink lists it; what it does not list is handed out again.
    pub(super) fn sink_restarted(&mut self, now: Instant, held: u32) {
        log::warn!("the sink restarted holding {held} results; re-checking the batch against it");
        self.tasks.doubt_held();
        self.covered = IntervalSet::new();
        self.ranges_heard = 0;
        // What is in doubt now is the resync's to settle: no worker is to blame for results
        // a restarted sink lost.
        self.reported_log.clear();
        self.resync = Some((held as usize, now));
        self.finish_resync_if_complete();
    }

    pub(super) fn finish_resync_if_complete(&mut self) {
        if let Some((expected, _)) = self.resync {
            if self.acks_heard() >= expected {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// If the sink's list never completes (it lost messages, or restarted again), stop
    /// waiting for it after a few heartbeats.
    pub(super) fn finish_resync_if_stale(&mut self, now: Instant) {
        if let Some((_, since)) = self.resync {
            if now.duration_since(since) > self.config.heartbeat.timeout() {
                self.resync = None;
                self.requeue_unconfirmed();
            }
        }
    }

    /// Hands out again every task reported done whose result the sink does not hold.
    pub(super) fn requeue_unconfirmed(&mut self) {
        let mut count = 0;
        for index in (0..self.len()).rev() {
            if self.tasks.state(index) == TaskState::Reported {
                self.requeue(index);
                count += 1;
            }
        }
        if count > 0 {
            log::warn!("handing out {count} tasks again whose results the sink does not hold");
        }
        self.recarve_unheld();
    }

    /// A divisible job after the sink restarted: every item neither held by it nor in a
    /// chunk still to be (re)done goes back to the carver, so items a previous sink held
    /// (and a fresh one lost) are carved again.
    pub(super) fn recarve_unheld(&mut self) {
        let Some(items) = self.carver.as_ref().map(|c| c.plan().items) else {
            return;
        };
        let mut taken = self.covered.clone();
        for index in 0..self.tasks.len() {
            if self.tasks.state(index) != TaskState::Held {
                let (a, b) = self.tasks.task(index).range();
                taken.insert(a..b);
            }
        }
        let free: Vec<(u64, u64)> = taken
            .gaps(items)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        if let Some(carver) = self.carver.as_mut() {
            carver.set_free(&free);
        }
    }

    /// What the sink's acknowledgement counts: held tasks, or a divisible job's
    /// `held-items` messages.
    pub(super) fn acks_heard(&self) -> usize {
        if self.carver.is_some() {
            self.ranges_heard
        } else {
            self.tasks.held()
        }
    }

    /// The sink holds these items (a divisible job): they are never carved, and every
    /// chunk they cover is held, whoever carved it.
    pub(super) fn held_items(&mut self, now: Instant, ranges: &[(u64, u64)]) {
        self.ranges_heard += 1;
        let items = self.carver.as_ref().map_or(0, |c| c.plan().items);
        let mut ids = Vec::new();
        for &(start, end) in ranges {
            if end > items {
                let why = format!("sink holds items {start}..{end} of a {items}-item job");
                self.reject_at(now, "sink", why);
                continue;
            }
            self.covered.insert(start..end);
            if let Some(carver) = self.carver.as_mut() {
                carver.remove(start, end);
            }
            // The chunk that holds `start` (chunks are disjoint) and those that begin
            // within the range.
            let before = self
                .chunk_at
                .range(..=start)
                .next_back()
                .map(|(&f, &id)| (f, id));
            let within = self.chunk_at.range(start + 1..end).map(|(&f, &id)| (f, id));
            for (_, id) in before.into_iter().chain(within) {
                let (a, b) = self.tasks.task(id as usize).range();
                if self.covered.contains_all(a..b) {
                    ids.push(id);
                }
            }
        }
        // Chunks stay in `chunk_at` once held: a restarted sink lists its ranges again, and
        // they must find the chunks they cover then too.
        self.mark_held(now, &ids);
    }

    pub(super) fn mark_held(&mut self, now: Instant, ids: &[u32]) {
        if self.config.observe && !ids.is_empty() {
            self.observe(Observed::Held { ids: ids.to_vec() });
        }
        for &id in ids {
            let index = id as usize;
            if index >= self.len() {
                let why = format!("sink holds task {id} of a {}-task batch", self.len());
                self.reject_at(now, "sink", why);
                continue;
            }
            match self.tasks.state(index) {
                TaskState::Held => continue,
                TaskState::Assigned => {
                    let slot = self.tasks.owner(index);
                    self.release(slot, index);
                }
                TaskState::Pending | TaskState::Requeued => {}
                TaskState::Reported => self.results_arrived(self.tasks.owner(index)),
            }
            self.tasks.hold(index);
            self.exclude.remove(&id);
        }
        self.finish_resync_if_complete();
    }

    // ---- workers ------------------------------------------------------------------------

    /// Drops the front of the reported log while it names tasks no longer waiting for the
    /// sink, so the log holds only what is in doubt, not every task of the batch.
    pub(super) fn prune_reported_log(&mut self) {
        while let Some(&(_, index, slot)) = self.reported_log.front() {
            let i = index as usize;
            if self.tasks.state(i) == TaskState::Reported && self.tasks.owner(i) == slot {
                break;
            }
            self.reported_log.pop_front();
        }
    }
}
