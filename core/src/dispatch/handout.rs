//! Credit and handing out: reports free credit, failures retry, the ready queue takes
//! tasks a turn at a time (a job's chunks carved as workers ask), and tasks go out framed
//! as the batch needs.

use super::*;

impl Dispatcher {
    pub(super) fn done(
        &mut self,
        now: Instant,
        routing_id: &[u8],
        done: &[Done],
        out: &mut Vec<Command>,
    ) {
        let Some(&slot) = self.by_routing_id.get(routing_id) else {
            // A worker of this batch that has not greeted this ventilator yet (it restarted):
            // its hello follows within a heartbeat, and the sink's word decides what is done.
            log::debug!(
                "credit from {} before its hello; ignored",
                crate::text::peer_name(routing_id)
            );
            return;
        };
        let s = slot as usize;
        self.workers[s].last_seen = now;
        if !self.workers[s].alive {
            // Declared gone already and its tasks handed on; its results still reach the
            // sink, which drops the duplicates.
            return;
        }
        if self.config.observe {
            let items = done
                .iter()
                .map(|d| match self.task_items(d.id) {
                    given if d.items > 0 => given.min(u64::from(d.items)),
                    given => given,
                })
                .collect();
            self.observe(Observed::Reported {
                worker: slot,
                done: done.to_vec(),
                items,
            });
        }
        for d in done {
            let Some(index) = usize::try_from(d.id).ok().filter(|&i| i < self.len()) else {
                let peer = crate::text::peer_name(routing_id);
                let why = format!("credit for task {} of a {}-task batch", d.id, self.len());
                self.reject_at(now, &peer, why);
                continue;
            };
            if !self.tasks.assigned_to(index, slot) {
                // Already reported, or handed to another worker as a backup: a report of a
                // task it was given still proves the worker works, and ends its stall; and
                // says how fast it is (a worker whose every task outlives the backup bound
                // would otherwise never be measured, and be backed up forever).
                let ran = self.ran_by.get_mut(&d.id).and_then(|by| {
                    let at = by.iter().position(|&w| w == slot)?;
                    Some(by.swap_remove(at))
                });
                // What it did: a chunk it cut short (a yield answered after its chunk was
                // copied) measures it by the items it reports, not the chunk's.
                let task = *self.tasks.task(index);
                let (items, workload_ms) = match d.items {
                    n if n > 0 && n < task.items => (
                        n,
                        (u64::from(task.workload_ms) * u64::from(n) / u64::from(task.items)).max(1)
                            as u32,
                    ),
                    _ => (task.items, task.workload_ms),
                };
                if ran.is_some() && d.status != Status::Failed {
                    self.learn_rate(s, workload_ms, d.wall_us);
                }
                if let (Some(carver), Some(_), Status::Ok | Status::Verified) =
                    (self.carver.as_mut(), ran, d.status)
                {
                    carver.learn(s, items, d.wall_us);
                }
                if self.workers[s].stalled {
                    self.workers[s].stalled = false;
                    self.workers[s].stalled_silent = false;
                    self.enqueue(slot);
                }
                continue;
            }
            self.release(slot, index);
            self.yielding.remove(&d.id);
            self.in_pieces.remove(&d.id);
            let given = self.tasks.task(index).items;
            let cut = d.status != Status::Failed && d.items > 0 && d.items < given;
            if cut {
                self.cut_chunk(index, d.items);
            }
            // Only a report that frees a task it held proves the worker and ends a stall.
            let worker = &mut self.workers[s];
            worker.stalled = false;
            worker.proven = true;
            worker.last_report = now;
            self.enqueue(slot);
            // A failure's time says nothing of its speed (one that fails at once would look
            // a hundred times faster than it is).
            if d.status != Status::Failed {
                self.learn_rate(s, self.tasks.task(index).workload_ms, d.wall_us);
            }
            if let (Some(carver), Status::Ok | Status::Verified) = (self.carver.as_mut(), d.status)
            {
                carver.learn(s, self.tasks.task(index).items, d.wall_us);
            }
            if d.status == Status::Failed {
                self.failed(now, slot, index, out);
            } else {
                self.tasks.report(index);
                self.workers[s].unheld += 1;
                self.reported_log.push_back((now, index as u32, slot));
                // The sink may have said it holds the items done before this report came.
                let (first, end) = self.tasks.task(index).range();
                if cut && self.covered.contains_all(first..end) {
                    self.mark_held(now, &[index as u32]);
                }
            }
        }
        if self.wake_due && now.saturating_duration_since(self.woken_at) >= END_GAME_REACT {
            self.wake_due = false;
            self.woken_at = now;
            self.wake_waiting();
        }
        // In a task list's tail, a worker its report left idle may take over a slower
        // one's task now, not at the next probe (`TAIL_PROBE`: 20 ms a copy, where several
        // wait for the fast worker): a scan of the holders, at most once an
        // `END_GAME_REACT` of the dispatcher's clock. Up to `END_GAME_DEFERRED` left idle
        // within it look at its end ([`Timer::EndGame`]; the rest at the probe): workers
        // alike report together, and the second waited a probe while the first ran two
        // dear bands one after the other. A job's chunks keep the probe's pace: their
        // yields are timed by it.
        let worker = &self.workers[s];
        if self.carver.is_none()
            && worker.alive
            && worker.assigned == 0
            && self.phase == Phase::Dispatching
            && self.in_tail()
        {
            let next = self.end_game_at + END_GAME_REACT;
            if now >= next {
                self.end_game_at = now;
                self.end_game(now, Some(vec![s]), out);
            } else if self.end_game_for.len() < END_GAME_DEFERRED && !self.end_game_for.contains(&s)
            {
                self.end_game_for.push(s);
                self.timers.set(Timer::EndGame, next);
            }
        }
    }

    /// Chunk `index`'s worker did its first `items` and gave up the rest (asked to yield
    /// in the end game): the chunk is those items, and the rest, less what the sink holds,
    /// goes back to be carved for idle workers.
    pub(super) fn cut_chunk(&mut self, index: usize, items: u32) {
        let (first, end) = self.tasks.task(index).range();
        let cut = first + u64::from(items);
        self.tasks.shorten(index, items);
        let total = self.carver.as_ref().map_or(0, |c| c.plan().items);
        let mut rest = crate::intervals::IntervalSet::new();
        for gap in self.covered.gaps(total) {
            let (a, b) = (gap.start.max(cut), gap.end.min(end));
            if a < b {
                rest.insert(a..b);
            }
        }
        if let Some(carver) = self.carver.as_mut() {
            let ranges: Vec<(u64, u64)> = rest.ranges().iter().map(|r| (r.start, r.end)).collect();
            carver.give_back_tail(&ranges);
        }
        self.chunks_cut += 1;
        self.items_handed_on += rest.covered();
        self.wake_waiting();
    }

    /// `slot` failed the task at `index`: it goes to another worker, or, at its
    /// `--max-attempts`th failure, nowhere: the sink is told to count it failed.
    pub(super) fn failed(
        &mut self,
        now: Instant,
        slot: WorkerId,
        index: usize,
        out: &mut Vec<Command>,
    ) {
        let failures = self.failures.entry(index as u32).or_insert(0);
        *failures += 1;
        let failures = *failures;
        let name = printable(&self.workers[slot as usize].info.name).into_owned();
        let task = *self.tasks.task(index);
        if failures < self.config.max_attempts {
            self.fail_log.warn_at(now, || {
                format!(
                    "worker {name} failed task {} (failure {failures} of at most {}); handing it \
                     to another worker",
                    task.id, self.config.max_attempts
                )
            });
            self.requeue(index);
            return;
        }
        log::error!(
            "task {} failed {failures} times, last on worker {name}: giving it up (--max-attempts \
             {}); the batch will fail",
            task.id,
            self.config.max_attempts
        );
        // Waiting for the sink's word, like a task reported done, but nobody's.
        self.tasks.give_up(index);
        self.gave_up.push(index as u32);
        out.push(Command::ToSink(self.gave_up_message(index)));
    }

    pub(super) fn gave_up_message(&self, index: usize) -> Message {
        let task = *self.tasks.task(index);
        Message::GaveUp {
            batch: self.config.batch_id,
            id: task.id,
            first: task.first,
            items: task.items,
            attempts: self.failures.get(&(index as u32)).copied().unwrap_or(0),
        }
    }

    /// Frees the credit a task held at its owner.
    pub(super) fn release(&mut self, slot: WorkerId, index: usize) {
        let workload = u64::from(self.tasks.task(index).workload_ms);
        let worker = &mut self.workers[slot as usize];
        if worker.alive {
            worker.assigned = worker.assigned.saturating_sub(1);
            let freed = workload.min(worker.assigned_ms);
            worker.assigned_ms -= freed;
            self.assigned_ms -= freed;
        }
        self.enqueue(slot);
    }

    /// A task `slot` reported is no longer waiting for the sink (held, or handed out
    /// again): one less against its cap, and it may take tasks again below it.
    pub(super) fn results_arrived(&mut self, slot: WorkerId) {
        let Some(worker) = self.workers.get_mut(slot as usize) else {
            return;
        };
        // Saturating: tasks a restarted sink put in doubt were not counted against anyone.
        worker.unheld = worker.unheld.saturating_sub(1);
        if worker.unheld < self.unheld_cap(slot as usize) {
            self.enqueue(slot);
        }
    }

    /// How many of its reported tasks a worker may have waiting for the sink before it
    /// gets no more: twice the most it may hold, so a worker whose results reach the sink
    /// a round trip after its reports never meets it.
    pub(super) fn unheld_cap(&self, slot: usize) -> u32 {
        let worker = &self.workers[slot];
        let hinted = u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW);
        // Tasks that cost nothing stream up to the larger cap (see `credit`).
        let streaming = worker.proven && self.config.longest_ms == 0 && self.carver.is_none();
        let window =
            self.config
                .window
                .max(hinted)
                .max(if streaming { self.config.max_window } else { 0 });
        window.saturating_mul(2).max(2)
    }

    pub(super) fn requeue(&mut self, index: usize) {
        // Out again whole: its next worker may be asked to yield it in its turn.
        self.yielding.remove(&(index as u32));
        if self.tasks.state(index) == TaskState::Reported {
            self.results_arrived(self.tasks.owner(index));
        }
        // A copy the sink asked for keeps its exclusions however it comes back (a lost or
        // stalled worker, a full queue).
        if self.exclude.contains_key(&(index as u32)) {
            self.queue_replica(index as u32);
        }
        self.tasks.requeue(index, true);
        self.wake_waiting();
        // Tasks are no longer scarce: workers set aside for the tail may take more.
        if !self.tail.is_empty() && self.tasks.pending() > self.alive {
            for slot in std::mem::take(&mut self.tail) {
                self.workers[slot as usize].in_tail = false;
                self.enqueue(slot);
            }
        }
    }

    /// Tasks whose send found the worker's queue full: taken back as they were.
    pub(super) fn bounced(&mut self, slot: WorkerId, tasks: &[Task], again: &[bool]) {
        // The kernel's source may have bounced with them: it goes again.
        if let Some(w) = self.workers.get_mut(slot as usize) {
            w.has_kernel = false;
        }
        for (task, &was_requeued) in tasks.iter().zip(again).rev() {
            let index = task.id as usize;
            if index >= self.len() || !self.tasks.assigned_to(index, slot) {
                continue;
            }
            self.release(slot, index);
            if was_requeued {
                self.redispatched = self.redispatched.saturating_sub(1);
            }
            self.tasks.requeue(index, was_requeued);
            // A copy the sink asked for keeps its exclusions: it waits with the copies.
            if self.exclude.contains_key(&task.id) {
                self.queue_replica(task.id);
            }
        }
        self.wake_waiting();
    }

    /// Whether `slot` may take `task` now, and if not, whether only because tasks are
    /// scarce. A worker gets a task when it has none, unless the others would finish it and
    /// everything else before it could (`outpaced`). Beyond that, once a report has
    /// measured it (tasks that cost nothing stream before), it may hold up to
    /// its window (so it never waits a round trip between tasks), but only while more tasks
    /// are pending than there are workers: near the end of a batch the last tasks wait
    /// here for whichever worker frees up first, instead of queueing behind a busy one
    /// while another idles. Tasks that cost nothing stream up to the larger cap, since
    /// they cannot make a tail.
    ///
    /// Whatever a worker asks for, it never holds more than its window (its pipeline depth,
    /// capped at [`MAX_HINTED_WINDOW`] or `--window` if larger), and never more than its
    /// share of what is left; a worker whose task was backed up gets nothing until it
    /// reports again.
    pub(super) fn credit(&self, now: Instant, slot: usize, task: &Task) -> Credit {
        let worker = &self.workers[slot];
        if !worker.alive || worker.stalled || worker.unheld >= self.unheld_cap(slot) {
            return Credit::None;
        }
        if worker.assigned == 0 {
            return match self.outpaced(now, slot, task) {
                Some(recheck) => Credit::Outpaced(recheck),
                None => Credit::Yes,
            };
        }
        if worker.assigned_ms + u64::from(task.workload_ms) == 0 {
            let cap = if worker.proven {
                self.config.max_window
            } else {
                self.config.window
            };
            if worker.assigned >= cap {
                return Credit::None;
            }
            let share = self.tasks.pending().div_ceil(self.alive.max(1));
            return if (worker.assigned as usize) < share.max(1) {
                Credit::Yes
            } else {
                Credit::Scarce
            };
        }
        // A worker not yet measured holds one task until it reports it, a probe as a
        // divisible job's first chunk is: a second task queued at a worker that turns out
        // slow waits as long as its first ran, and the end game can then only copy it.
        if worker.us_per_ms.is_none() {
            return Credit::None;
        }
        let hinted = u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW);
        let window = self.config.window.max(hinted);
        if worker.assigned >= window {
            return Credit::None;
        }
        if self.tasks.pending() <= self.alive {
            return Credit::Scarce;
        }
        // Measured (a worker not yet measured returned above).
        let us_per_ms = worker.us_per_ms.unwrap_or(1000.0);
        // Queued behind what it holds, the task must end within the batch's horizon.
        let finish_us = (worker.assigned_ms + u64::from(task.workload_ms)) as f64 * us_per_ms;
        if finish_us <= self.horizon_us() {
            Credit::Yes
        } else {
            Credit::None
        }
    }

    /// Whether the other workers, at their measured speeds, would finish all the work not
    /// yet done, this task included, before `slot` finished `task`: it is then left to
    /// them, since on this worker it could only end the batch late or be copied by the end
    /// game (eight cpu workers beside a card each took a band at the end and held the
    /// batch up). The others' finish is the later of the work left spread over them and
    /// the soonest one of them could end this task whole, after what it holds.
    ///
    /// Only a task list's timed task (not a copy `--replicate` asked for: its exclusions
    /// may leave it to this worker alone), only for a measured worker, counting only others
    /// measured and not stalled (one that never reports would leave the task to the backup
    /// rule), and only while one of them holds tasks and reports at the pace it claims
    /// (within twice what it holds at its speed, and a heartbeat): its report brings it back
    /// for the task, and a peer that lies about its speed and sits on its tasks keeps the
    /// others idle a heartbeat at most.
    ///
    /// A holder's pace is raised by how long its task in hand has run: past what its pace
    /// predicts, the task is taken to need as long again as it has run (the end game's
    /// rule). A task list's tasks are declared alike however they cost, and a worker
    /// measured on one cheap band looked a hundred times faster than the rest while it ran
    /// a dear one for a second and they waited. `Some` when outpaced, with when to look
    /// again though no message comes: the soonest a holder counted has run twice what was
    /// predicted of it (none where no holder's task in hand has a workload: the
    /// heartbeat). One recheck is armed at a time, for its holder and task: where that
    /// holder reports on time and another overruns, the heartbeat is the second look.
    fn outpaced(&self, now: Instant, slot: usize, task: &Task) -> Option<Option<Recheck>> {
        let us_per_ms = self.workers[slot].us_per_ms?;
        if task.is_chunk() || task.workload_ms == 0 || self.exclude.contains_key(&task.id) {
            return None;
        }
        let mine_us = us_per_ms * f64::from(task.workload_ms);
        let work_ms = (self.tasks.pending_ms() + self.assigned_ms) as f64;
        let spread_us = |speed: f64| work_ms * 1000.0 / speed.max(1e-9);
        // Every other live worker first (a bound: those that count are fewer and slower),
        // so the scan below runs only where this worker is the slow one.
        let all_others = self.speed - speed_of(&self.workers[slot]);
        if all_others <= 0.0 || mine_us <= spread_us(all_others) {
            return None;
        }
        // Only a worker clearly slower than the others measured on average: on an even
        // farm the soonest another could end the task is its own time, so nothing is held
        // back, and the scan below would run for every idle worker at a batch's end.
        let mean_other = all_others / self.measured.saturating_sub(1).max(1) as f64;
        if speed_of(&self.workers[slot]) * OUTPACED_MARGIN > mean_other {
            return None;
        }
        let (mut counted, mut holding, mut soonest_us) = (0.0, false, f64::INFINITY);
        let mut recheck: Option<Recheck> = None;
        for (other, w) in self.workers.iter().enumerate() {
            let Some(measured) = w
                .us_per_ms
                .filter(|_| other != slot && w.alive && !w.stalled)
            else {
                continue;
            };
            let mut theirs = measured;
            if w.assigned > 0 {
                // The task in hand: the first it was given that it still holds.
                let (given, index, in_hand_ms) = w
                    .given
                    .iter()
                    .find(|&&(_, i)| self.tasks.assigned_to(i as usize, other as WorkerId))
                    .map_or((w.last_report, 0, 0), |&(at, i)| {
                        (at, i, self.tasks.task(i as usize).workload_ms)
                    });
                let since = given.max(w.last_report);
                let ran_us = now.saturating_duration_since(since).as_secs_f64() * 1e6;
                let due =
                    Duration::from_secs_f64((2.0 * w.assigned_ms as f64 * measured / 1e6).min(1e6))
                        + self.config.heartbeat.interval;
                if ran_us > due.as_secs_f64() * 1e6 {
                    continue;
                }
                holding = true;
                if in_hand_ms > 0 {
                    let predicted_us = measured * f64::from(in_hand_ms);
                    if ran_us >= predicted_us {
                        theirs = measured.max(2.0 * ran_us / f64::from(in_hand_ms));
                    }
                    // Looked at again once it has run twice what was predicted of it then:
                    // a worker that reports at its pace has reported by then.
                    let ends_us = OUTPACED_MARGIN * ran_us.max(predicted_us);
                    let ends = since + Duration::from_secs_f64((ends_us / 1e6).min(1e6));
                    if ends > now && recheck.is_none_or(|r| ends < r.at) {
                        recheck = Some(Recheck {
                            at: ends,
                            holder: other as WorkerId,
                            index,
                        });
                    }
                }
            }
            counted += 1000.0 / theirs.max(1e-3);
            let held_us = w.assigned_ms as f64 * theirs;
            soonest_us = soonest_us.min(held_us + f64::from(task.workload_ms) * theirs);
        }
        (holding && mine_us > spread_us(counted).max(soonest_us)).then_some(recheck)
    }

    /// A new chunk of a divisible job for `slot`, queued first. A worker is carved a chunk
    /// when it holds none, and, with a window of two or more, its next one while it holds
    /// one, on an even farm far from the job's end or alone (`Carver::may_queue`): the next
    /// chunk then waits in its queue, so it never idles for a round trip between chunks.
    pub(super) fn carve(&mut self, slot: usize) -> Carved {
        let worker = &self.workers[slot];
        let window = self
            .config
            .window
            .max(u32::from(worker.info.window_hint).min(MAX_HINTED_WINDOW));
        if !worker.alive
            || worker.stalled
            || worker.assigned > 1
            || (worker.assigned == 1 && window < 2)
            || worker.unheld >= self.unheld_cap(slot)
        {
            return Carved::NotNow;
        }
        let held_one = worker.assigned == 1;
        let Some(carver) = self.carver.as_mut() else {
            return Carved::Nothing;
        };
        if held_one && !carver.may_queue(slot) {
            return Carved::NotNow;
        }
        let Some((first, items)) = carver.carve(slot) else {
            return Carved::Nothing;
        };
        // Its workload is what it should take on this worker, in ms (what the backup rule
        // measures it by); the target until the worker's rate is known.
        let plan = *carver.plan();
        let expected_ms = match (carver.rate(slot), plan.policy) {
            (Some(rate), _) => f64::from(items) * 1000.0 / rate,
            (None, _) if plan.nominal_us > 0.0 => f64::from(items) * plan.nominal_us / 1000.0,
            (None, Policy::Adaptive(target)) => target.as_secs_f64() * 1000.0,
            (None, _) => 1000.0,
        };
        let id = self.tasks.len() as u32;
        let task = Task {
            id,
            workload_ms: expected_ms
                .ceil()
                .clamp(1.0, f64::from(crate::batch::MAX_WORKLOAD_MS))
                as u32,
            first,
            items,
        };
        self.tasks.add(task);
        self.chunk_at.insert(first, id);
        Carved::Chunk(id)
    }

    /// The next task still pending, without removing it.
    pub(super) fn peek_pending(&mut self) -> Option<u32> {
        // A copy the sink asked for goes out from `replicas` only, to a worker it does not
        // exclude.
        let replicas = &self.replica_set;
        self.tasks.peek(|id| replicas.contains(&id))
    }

    /// Hands out tasks to the workers in the ready queue, one task per worker per turn, so
    /// the longest tasks spread across workers; then one message per worker. A worker
    /// without credit leaves the queue; the cost is one queue step per task handed out,
    /// plus one per worker that leaves.
    pub(super) fn dispatch(&mut self, now: Instant, out: &mut Vec<Command>) {
        let mut batches: Vec<(WorkerId, Vec<Task>, Vec<bool>)> = Vec::new();
        while self.tasks.pending() > 0 || self.carver.as_ref().is_some_and(|c| c.left() > 0) {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let s = slot as usize;
            self.workers[s].queued = false;
            let replica = self.replica_for(s);
            let mut carved = false;
            let id = match replica.map(|(_, id)| id).or_else(|| self.peek_pending()) {
                Some(id) => id,
                None => match self.carve(s) {
                    Carved::Chunk(id) => {
                        carved = true;
                        id
                    }
                    // Back in the queue when its chunk is reported.
                    Carved::NotNow => continue,
                    // Copies wait for other workers: this one waits for a task or a copy
                    // it may run.
                    Carved::Nothing if !self.replicas.is_empty() => {
                        if !self.workers[s].in_waiting {
                            self.workers[s].in_waiting = true;
                            self.waiting.push(slot);
                        }
                        continue;
                    }
                    Carved::Nothing => {
                        self.enqueue(slot);
                        break;
                    }
                },
            };
            let task = *self.tasks.task(id as usize);
            // A chunk carved for this worker was carved by its own rules (`carve`).
            let credit = if carved {
                Credit::Yes
            } else {
                self.credit(now, s, &task)
            };
            match credit {
                Credit::None => continue,
                Credit::Scarce => {
                    if !self.workers[s].in_tail {
                        self.workers[s].in_tail = true;
                        self.tail.push(slot);
                    }
                    continue;
                }
                Credit::Outpaced(recheck) => {
                    if let Some(r) = recheck
                        .filter(|r| self.timers.get(Timer::Recheck).is_none_or(|at| r.at < at))
                    {
                        self.timers.set(Timer::Recheck, r.at);
                        self.recheck_on = Some((r.holder, r.index));
                    }
                    if !self.workers[s].in_waiting {
                        self.workers[s].in_waiting = true;
                        self.waiting.push(slot);
                    }
                    continue;
                }
                Credit::Yes => {}
            }
            let b = match self.workers[s].outgoing {
                Some(b) => b as usize,
                None => {
                    batches.push((slot, Vec::new(), Vec::new()));
                    self.workers[s].outgoing = Some(batches.len() as u32 - 1);
                    batches.len() - 1
                }
            };
            if batches[b].1.len() >= MAX_ITEMS_PER_MESSAGE {
                // A full message this call; its turn comes again on the next.
                self.deferred.push(slot);
                continue;
            }
            match replica {
                Some((pos, index)) => {
                    self.replicas.remove(pos);
                    self.replica_set.remove(&index);
                    // What a waiting worker would find has changed: a copy it may run may
                    // now be within its look.
                    self.wake_waiting();
                }
                None => {
                    self.tasks.pop();
                }
            }
            self.assigned_ms += u64::from(task.workload_ms);
            let again = self.tasks.assign(id as usize, slot);
            if again {
                self.items_redone += u64::from(task.items);
            }
            batches[b].2.push(again);
            let worker = &mut self.workers[s];
            worker.given.push_back((now, id));
            worker.assigned += 1;
            worker.assigned_ms += u64::from(task.workload_ms);
            batches[b].1.push(task);
            self.enqueue(slot);
        }
        // Workers set aside for a full message go back for the next call.
        for slot in std::mem::take(&mut self.deferred) {
            self.enqueue(slot);
        }
        for (worker, tasks, again) in batches {
            self.workers[worker as usize].outgoing = None;
            self.redispatched += again.iter().filter(|&&a| a).count() as u64;
            self.send_tasks(worker, tasks, again, out);
        }
    }

    /// Tasks for `worker`, framed as [`Framing`] says: the kernel's source first if it has
    /// not had it since it greeted, one task a command when tasks carry inputs.
    pub(super) fn send_tasks(
        &mut self,
        worker: WorkerId,
        tasks: Vec<Task>,
        again: Vec<bool>,
        out: &mut Vec<Command>,
    ) {
        let framing = self.config.framing;
        let w = &mut self.workers[worker as usize];
        let kernel = framing.kernel && !w.has_kernel;
        w.has_kernel |= framing.kernel;
        let compress = framing.compress && w.info.codecs & crate::protocol::CODEC_LZ4 != 0;
        if framing.inputs {
            for (n, (task, again)) in tasks.into_iter().zip(again).enumerate() {
                out.push(Command::Tasks {
                    worker,
                    tasks: vec![task],
                    again: vec![again],
                    kernel: kernel && n == 0,
                    compress,
                    in_pieces: false,
                });
            }
        } else {
            let in_pieces = self.may_be_relieved(worker as usize);
            for task in tasks.iter().filter(|t| t.is_chunk()) {
                if in_pieces {
                    self.in_pieces.insert(task.id);
                } else {
                    self.in_pieces.remove(&task.id);
                }
            }
            out.push(Command::Tasks {
                worker,
                tasks,
                again,
                kernel,
                compress,
                in_pieces,
            });
        }
    }

    /// Whether `slot`'s chunks go in pieces: a chunk it runs could be cut (its backend and
    /// the job allow it, the job is not replicated), and another worker could relieve it
    /// in the end game. Only a worker alone, or a device worker measured faster than every
    /// other by a clear margin (4 times: rates measured on items of different costs
    /// mislead by more than a fifth), runs chunks whole, sparing a piece's fixed costs
    /// (4-6 % of a one-worker Mandelbrot job on the software adapter). A worker whose
    /// pieces cost nothing ([`crate::pieces::free`]) is never judged by its rate: a cpu
    /// worker measured on rows outside the set looked more than four times as fast as
    /// the software adapter on rows through it, ran a chunk through the set whole, and
    /// the adapter had to compute it again.
    pub(super) fn may_be_relieved(&self, slot: usize) -> bool {
        let Some(carver) = self.carver.as_ref() else {
            return false;
        };
        let backend = &self.workers[slot].info.backend;
        self.config.job.replicate_percent == 0
            && self.alive > 1
            && crate::pieces::splits(&self.config.job, backend)
            && (crate::pieces::free(backend) || !carver.clearly_fastest(slot, CLEAR_MARGIN))
    }

    /// Nothing is left to hand out: the batch's tail, where a worker that vanished holding
    /// tasks holds up the batch.
    pub(super) fn in_tail(&self) -> bool {
        self.tasks.pending() == 0 && self.carver.as_ref().is_none_or(|c| c.left() == 0)
    }

    /// Folds a report's wall time into the worker's measured speed and its best (least)
    /// pace; a report over twice its smoothed pace has the workers waiting as outpaced
    /// look again (`wake_due`).
    pub(super) fn learn_rate(&mut self, slot: usize, workload_ms: u32, wall_us: u32) {
        if workload_ms == 0 {
            return;
        }
        let sample = f64::from(wall_us).max(1.0) / f64::from(workload_ms);
        let before = speed_of(&self.workers[slot]);
        if self.workers[slot].us_per_ms.is_none() && self.workers[slot].alive {
            self.measured += 1;
        }
        let rate = &mut self.workers[slot].us_per_ms;
        // Far slower than its pace said: that pace was measured on cheaper tasks (a band of
        // sky, then one through the set), and workers left waiting as outpaced by it may
        // not be; they look again after this message, not at the next heartbeat.
        self.wake_due |= rate.is_some_and(|r| sample > r * OUTPACED_MARGIN);
        *rate = Some(rate.map_or(sample, |r| r * 0.8 + sample * 0.2));
        let best = &mut self.workers[slot].best_us_per_ms;
        *best = Some(best.map_or(sample, |b| b.min(sample)));
        self.speed += speed_of(&self.workers[slot]) - before;
    }
}
