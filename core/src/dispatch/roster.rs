//! The workers: greetings, names (the claim rule of `crate::claims`), refusals, losses
//! (silent, gone, unreachable, declined, quarantined, their results going nowhere), and
//! the ready queue of workers that may take tasks.

use super::*;

impl Dispatcher {
    pub(super) fn on_worker(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        message: Message,
        out: &mut Vec<Command>,
    ) {
        let batch_id = self.config.batch_id;
        match message {
            Message::Hello(info) => self.hello(now, routing_id, info, out),
            Message::Join(_) => {
                let reason = format!(
                    "this looks like a worker that connected its sink endpoint to a ventilator: {} is \
                     conquer's ventilator (tasks), not a sink; pass the sink's endpoint (port 5558 by \
                     default) as --sink and this one as --ventilator",
                    self.config.endpoint
                );
                self.refuse(now, routing_id, RefusalKind::WrongPeer, reason, out);
            }
            Message::Done { batch, done } if batch == batch_id => {
                self.done(now, &routing_id, &done, out)
            }
            Message::Done { batch, .. } => {
                // Credit for another batch (perhaps a worker's leftovers from the last one):
                // it proves the worker alive, and is counted as foreign.
                if let Some(&slot) = self.by_routing_id.get(&routing_id) {
                    self.workers[slot as usize].last_seen = now;
                }
                let peer = crate::text::peer_name(&routing_id);
                self.reject_at(
                    now,
                    &peer,
                    format!("credit for batch {batch:016x}, not this one"),
                );
            }
            Message::Bye => self.bye(now, &routing_id),
            Message::Decline { batch, reason } if batch == batch_id => {
                self.decline(now, &routing_id, &reason, out)
            }
            other => {
                let peer = crate::text::peer_name(&routing_id);
                let why = format!(
                    "unexpected {} message on the tasks socket",
                    other.kind_name()
                );
                self.reject_at(now, &peer, why);
            }
        }
    }

    pub(super) fn reject_at(&mut self, now: Instant, peer: &str, why: String) {
        self.rejected += 1;
        self.reject_log
            .warn_at(now, || format!("dropped a message from {peer}: {why}"));
    }

    pub(super) fn refuse(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        kind: RefusalKind,
        reason: String,
        out: &mut Vec<Command>,
    ) {
        let peer = printable(&crate::text::peer_name(&routing_id)).into_owned();
        self.refuse_log
            .warn_at(now, || format!("refused {peer}: {reason}"));
        out.push(Command::Reply {
            routing_id,
            message: Message::Refused { kind, reason },
        });
    }

    pub(super) fn hello(
        &mut self,
        now: Instant,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        out: &mut Vec<Command>,
    ) {
        if let Err(why) = crate::heartbeat::check_name(&info.name) {
            self.refuse(now, routing_id, RefusalKind::BadName, why, out);
            return;
        }
        match self.by_routing_id.get(&routing_id).copied() {
            Some(slot) if self.workers[slot as usize].refused => {
                let reason = format!(
                    "worker {:?} was turned away: its results did not reach the sink; restart it with a \
                     working --sink",
                    self.workers[slot as usize].info.name
                );
                self.refuse(now, routing_id, RefusalKind::ResultsLost, reason, out);
            }
            Some(slot) if self.workers[slot as usize].declined => {
                self.workers[slot as usize].last_seen = now;
            }
            Some(slot) => {
                let worker = &mut self.workers[slot as usize];
                worker.last_seen = now;
                // The routing id carries the name and session: a greeting may update what
                // the worker runs on, never who it is.
                worker.info.backend = info.backend;
                worker.info.adapter = info.adapter;
                worker.info.window_hint = info.window_hint;
                worker.info.codecs = info.codecs;
                worker.info.fill = info.fill;
                // An `auto` worker's device, built for this job after it first greeted.
                let floor = self.fill_floor(info.fill);
                if let Some(carver) = self.carver.as_mut() {
                    carver.set_floor(slot as usize, floor);
                }
                let worker = &mut self.workers[slot as usize];
                worker.has_kernel = false;
                if worker.alive && worker.stalled && worker.stalled_silent {
                    // Heard again after a silence that cost it its tasks: it may take more.
                    worker.stalled = false;
                    worker.stalled_silent = false;
                    self.enqueue(slot);
                    return;
                }
                if !worker.alive {
                    log::debug!("worker {} is back", printable(&worker.info.name));
                    worker.alive = true;
                    worker.assigned = 0;
                    worker.assigned_ms = 0;
                    worker.stalled = false;
                    worker.stalled_silent = false;
                    self.alive += 1;
                    self.speed += speed_of(&self.workers[slot as usize]);
                    self.measured += usize::from(self.workers[slot as usize].us_per_ms.is_some());
                    let name = self.workers[slot as usize].info.name.clone();
                    self.by_name.insert(name, slot);
                    self.observe(Observed::Back { worker: slot });
                    if let Some(carver) = self.carver.as_mut() {
                        carver.join(slot as usize);
                    }
                    self.enqueue(slot);
                    out.push(Command::ToWorker {
                        worker: slot,
                        message: self.heartbeat(),
                    });
                }
            }
            None => {
                if self.claims.is_waiting(&routing_id) {
                    return; // its first greeting is being settled
                }
                // Another live worker under the same name (a second process given the same
                // --name) is refused; one whose connection is gone gives its name up. Which
                // it is, the heartbeat sent to it now tells: `Unreachable` comes back at
                // once if its connection is gone.
                let namesake = self.by_name.get(&info.name).copied().filter(|&w| {
                    let w = &self.workers[w as usize];
                    let holder = Holder {
                        session: w.info.session,
                        routing_id: &w.routing_id,
                        live: w.alive,
                    };
                    clashes(holder, info.session, &routing_id)
                });
                if let Some(old) = namesake {
                    out.push(Command::ToWorker {
                        worker: old as WorkerId,
                        message: self.heartbeat(),
                    });
                    self.claims.wait(old, routing_id, info);
                    return;
                }
                self.admit(routing_id, info, now, out);
            }
        }
    }

    /// A device's fill (invocations), in the job's items: its chunks are no smaller.
    fn fill_floor(&self, fill: u32) -> u64 {
        crate::kernels::items_filling(&self.config.job, fill)
    }

    pub(super) fn admit(
        &mut self,
        routing_id: Vec<u8>,
        info: WorkerInfo,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        log::debug!(
            "worker {} joined ({}{}{})",
            printable(&info.name),
            info.backend,
            if info.adapter.is_empty() { "" } else { " on " },
            info.adapter
        );
        let slot = self.workers.len() as WorkerId;
        self.by_routing_id.insert(routing_id.clone(), slot);
        self.by_name.insert(info.name.clone(), slot);
        let floor = self.fill_floor(info.fill);
        self.workers.push(WorkerSlot::new(routing_id, info, now));
        if let Some(carver) = self.carver.as_mut() {
            carver.join(slot as usize);
            carver.set_floor(slot as usize, floor);
        }
        self.note_worker(slot, "joined", None);
        self.alive += 1;
        self.enqueue(slot);
        out.push(Command::ToWorker {
            worker: slot,
            message: self.heartbeat(),
        });
    }

    /// Newcomers whose namesake answered no `Unreachable` are refused: the name is taken.
    /// (Those whose namesake was gone were admitted when it was lost.)
    pub(super) fn settle_claims(&mut self, now: Instant, out: &mut Vec<Command>) {
        if self.claims.is_empty() {
            return;
        }
        for claim in self.claims.settle() {
            let reason = name_taken(&claim.info.name, "ventilator", &self.config.endpoint);
            let peer = printable(&crate::text::peer_name(&claim.routing_id)).into_owned();
            self.refuse_log
                .warn_at(now, || format!("refused {peer}: {reason}"));
            out.push(Command::Reply {
                routing_id: claim.routing_id,
                message: Message::Refused {
                    kind: RefusalKind::NameTaken,
                    reason,
                },
            });
        }
    }

    pub(super) fn unreachable(&mut self, now: Instant, worker: WorkerId, out: &mut Vec<Command>) {
        if (worker as usize) < self.workers.len() && self.workers[worker as usize].alive {
            self.note_worker(worker, "unreachable", None);
            self.lose_worker(worker, now);
        }
        // Newcomers waiting on this worker's name take it now.
        for claim in self.claims.holder_gone(&worker) {
            if !self.by_routing_id.contains_key(&claim.routing_id) {
                self.admit(claim.routing_id, claim.info, now, out);
            }
        }
    }

    /// A worker cannot run this batch's kernel: what it holds goes to others, and it gets
    /// nothing more of this batch (it stays known, so its greetings do not revive it).
    pub(super) fn decline(
        &mut self,
        now: Instant,
        routing_id: &[u8],
        reason: &str,
        out: &mut Vec<Command>,
    ) {
        let Some(&slot) = self.by_routing_id.get(routing_id) else {
            return;
        };
        let worker = &mut self.workers[slot as usize];
        worker.last_seen = now;
        if worker.declined {
            return;
        }
        log::warn!(
            "worker {} cannot run this batch: {}; it gets none of its tasks",
            printable(&worker.info.name),
            printable(reason)
        );
        self.note_worker(slot, "declined", None);
        self.set_aside(slot, now, reason, out);
    }

    /// `slot` gets nothing more of this batch (it declined, or was quarantined): what it
    /// holds goes to others; once every worker of a fixed farm is set aside, the batch
    /// stops.
    pub(super) fn set_aside(
        &mut self,
        slot: WorkerId,
        now: Instant,
        reason: &str,
        out: &mut Vec<Command>,
    ) {
        self.declines += 1;
        self.lose_worker(slot, now);
        self.workers[slot as usize].declined = true;
        let workers = self.config.fixed_workers;
        if workers > 0 && self.declines >= workers {
            let reason = reason.to_owned();
            self.stop(Stopped::AllDeclined { workers, reason }, out);
        }
    }

    pub(super) fn bye(&mut self, now: Instant, routing_id: &[u8]) {
        if let Some(&slot) = self.by_routing_id.get(routing_id) {
            if self.workers[slot as usize].alive {
                log::debug!(
                    "worker {} left",
                    printable(&self.workers[slot as usize].info.name)
                );
                self.note_worker(slot, "left", None);
                self.lose_worker(slot, now);
            }
        }
    }

    /// A worker is gone: every task it held that the sink does not hold goes to others.
    /// Costs what the worker was given and not yet seen held, never a scan of the batch.
    pub(super) fn lose_worker(&mut self, slot: WorkerId, now: Instant) {
        let s = slot as usize;
        if self.workers[s].alive {
            self.observe(Observed::Lost { worker: slot });
            if self.by_name.get(&self.workers[s].info.name) == Some(&slot) {
                self.by_name.remove(&self.workers[s].info.name);
            }
            self.alive -= 1;
            self.speed -= speed_of(&self.workers[s]);
            self.measured -= usize::from(self.workers[s].us_per_ms.is_some());
            self.assigned_ms -= self.workers[s].assigned_ms;
            self.workers[s].alive = false;
            // The rest of the work now takes longer: a worker left waiting as outpaced
            // may be needed.
            self.wake_waiting();
        }
        self.workers[s].alive = false;
        if let Some(carver) = self.carver.as_mut() {
            carver.leave(s);
        }
        self.workers[s].assigned = 0;
        self.workers[s].assigned_ms = 0;
        self.workers[s].unheld = 0;
        let given = std::mem::take(&mut self.workers[s].given);
        let mut handed_on = 0;
        // Backwards, so the requeued tasks keep their dispatch order at the front.
        for &(_, index) in given.iter().rev() {
            let i = index as usize;
            if self.tasks.outstanding_with(i, slot) {
                self.requeue(i);
                handed_on += 1;
            }
        }
        if matches!(self.phase, Phase::Draining { .. }) {
            // The job is over; workers leaving now are expected.
            return;
        }
        let name = printable(&self.workers[s].info.name).into_owned();
        self.gone_log.warn_at(now, || {
            format!(
                "worker {name} is gone; handing its {handed_on} unfinished tasks to other workers"
            )
        });
    }

    pub(super) fn expire_silent_workers(&mut self, now: Instant) {
        let timeout = self.config.heartbeat.timeout();
        for slot in 0..self.workers.len() {
            let silent = now.saturating_duration_since(self.workers[slot].last_seen);
            if self.workers[slot].alive && silent > timeout {
                let name = printable(&self.workers[slot].info.name).into_owned();
                self.gone_log.warn_at(now, || {
                    format!(
                        "worker {name} silent for {:.1} s; declaring it gone",
                        silent.as_secs_f64()
                    )
                });
                self.note_worker(slot as WorkerId, "silent", Some(silent));
                self.lose_worker(slot as WorkerId, now);
            }
        }
    }

    // ---- handing out ----------------------------------------------------------------------

    pub(super) fn heartbeat_workers(&self, out: &mut Vec<Command>) {
        let beat = self.heartbeat();
        for (id, w) in self.workers.iter().enumerate() {
            // A worker that declined still hears the ventilator: it is not gone.
            if w.alive || w.declined {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: beat.clone(),
                });
            }
        }
    }

    /// Workers whose reported-done tasks have not reached the sink (which answers) within
    /// the bound: told why and dropped, their tasks handed to others.
    pub(super) fn refuse_undelivering_workers(&mut self, now: Instant, out: &mut Vec<Command>) {
        let bound = self.config.heartbeat.timeout() * UNDELIVERED_TIMEOUTS;
        // A worker at its cap of undelivered reports is given one timeout, not four: its
        // reports have outrun its results by a window's worth already.
        let capped_bound = self.config.heartbeat.timeout();
        let mut stale: Vec<(u32, u32)> = Vec::new();
        let mut count = |slot: u32| match stale.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, n)) => *n += 1,
            None => stale.push((slot, 1)),
        };
        for &(at, index, slot) in &self.reported_log {
            let age = now.saturating_duration_since(at);
            if age < capped_bound {
                break;
            }
            let i = index as usize;
            if age < bound
                && self.tasks.state(i) == TaskState::Reported
                && self.tasks.owner(i) == slot
                && self.workers[slot as usize].unheld >= self.unheld_cap(slot as usize)
            {
                count(slot);
            }
        }
        while let Some(&(at, index, slot)) = self.reported_log.front() {
            if now.saturating_duration_since(at) < bound {
                break;
            }
            self.reported_log.pop_front();
            let i = index as usize;
            if self.tasks.state(i) == TaskState::Reported && self.tasks.owner(i) == slot {
                count(slot);
            }
        }
        for (slot, count) in stale {
            let s = slot as usize;
            if !self.workers[s].alive {
                continue;
            }
            let name = self.workers[s].info.name.clone();
            let reason = format!(
                "worker {name:?} reported {count} tasks done whose results have not reached the sink at \
                 {} after {:.0} s, while the sink answers the ventilator; check the worker's --sink \
                 (its tasks go to other workers)",
                self.config.sink,
                bound.as_secs_f64()
            );
            log::warn!("{}", printable(&reason));
            self.workers[s].refused = true;
            out.push(Command::ToWorker {
                worker: slot,
                message: Message::Refused {
                    kind: RefusalKind::ResultsLost,
                    reason,
                },
            });
            self.note_worker(slot, "refused", None);
            self.lose_worker(slot, now);
        }
    }

    /// Puts a worker in the ready queue if it may take tasks and is not there yet.
    pub(super) fn enqueue(&mut self, slot: WorkerId) {
        let w = &mut self.workers[slot as usize];
        if w.alive && !w.stalled && !w.queued {
            w.queued = true;
            self.ready.push_back(slot);
        }
    }

    /// Idle workers that waited for a copy they may run, or were outpaced, look again
    /// (when a task comes back, a copy is queued or handed out, a worker is lost, a report
    /// runs far slower than its worker's pace said, and each heartbeat). Each leaves the
    /// list as it is woken, so a run of requeues costs one wake per waiting worker.
    pub(super) fn wake_waiting(&mut self) {
        for slot in std::mem::take(&mut self.waiting) {
            self.workers[slot as usize].in_waiting = false;
            self.enqueue(slot);
        }
    }
}
