//! Backups and the end game: a straggler's task backed up, a silent holder's too, and in
//! the tail an idle worker taking over the task predicted to finish last when it would
//! finish it sooner.

use super::*;

impl Dispatcher {
    /// The end game: nothing is left to hand out, so an idle worker whose measured speed
    /// would finish the task predicted to end last sooner than the worker that holds it
    /// (by a fifth at least) gets a copy of it. The first result wins, as with backups;
    /// the holder is not stalled. The fastest idle workers choose first, and a task taken
    /// over goes again only to a worker predicted to finish it a fifth sooner than its
    /// taker, at most [`MAX_TAKEOVERS`] times, and once more to the farm's fastest worker
    /// (slow workers taking over from slower ones must not use up the copies the fastest
    /// needs): duplicated work stays bounded (a few copies of the last tasks), and is
    /// counted as redispatched. A task list's holder is predicted no faster than the
    /// taker's prediction scaled by their paces on the cheapest task each ran
    /// (`holder_us`), and its idle workers choose in the order of those paces.
    ///
    /// A chunk whose worker runs it in pieces is not copied but cut: its worker is asked
    /// to yield the items it has not started ([`Message::Yield`]), and they are carved
    /// again, for the idle worker first.
    ///
    /// `only`: the idle workers to look for (reports just left them idle), else every
    /// idle worker (the tail's probe).
    pub(super) fn end_game(
        &mut self,
        now: Instant,
        only: Option<Vec<usize>>,
        out: &mut Vec<Command>,
    ) {
        if self.alive < 2 {
            return;
        }
        let idle_now = |s: &usize| self.workers[*s].alive && self.workers[*s].assigned == 0;
        let mut idle: Vec<usize> = match only {
            Some(slots) => slots.into_iter().filter(idle_now).collect(),
            None => (0..self.workers.len()).filter(idle_now).collect(),
        };
        // Fastest first: a slower worker taking the last task first would keep a faster
        // one, idle a moment later, waiting on it. Unmeasured workers last. A task list's
        // workers by their paces on the cheapest task each ran: smoothed paces measured on
        // bands of sky put slow workers ahead of the fast one measured through the set,
        // and they used up the copies it needed.
        let chunks = self.carver.is_some();
        let pace = |s: usize| -> f64 {
            let measured = if chunks {
                self.carver
                    .as_ref()
                    .and_then(|c| c.rate(s))
                    .map(|r| 1.0 / r.max(1e-9))
            } else {
                self.workers[s].best_us_per_ms
            };
            measured.unwrap_or(f64::INFINITY)
        };
        let paces: Vec<f64> = (0..self.workers.len()).map(pace).collect();
        idle.sort_by(|&a, &b| paces[a].total_cmp(&paces[b]));
        let fastest = (0..self.workers.len())
            .filter(|&s| self.workers[s].alive)
            .map(|s| paces[s])
            .fold(f64::INFINITY, f64::min);
        for slot in idle {
            let w = &self.workers[slot];
            if !w.alive
                || w.declined
                || w.stalled
                || w.assigned > 0
                || w.unheld >= self.unheld_cap(slot)
            {
                continue;
            }
            let Some(last) = self.last_to_finish(now, slot, paces[slot] <= fastest) else {
                return;
            };
            let index = last.index;
            // A copy the sink asked for never goes back to a worker whose copy it has, nor
            // a task to a worker it was taken from (its copy still runs there).
            if self
                .exclude
                .get(&(index as u32))
                .is_some_and(|names| names.contains(&self.workers[slot].info.name))
                || self
                    .ran_by
                    .get(&(index as u32))
                    .is_some_and(|by| by.contains(&(slot as WorkerId)))
            {
                continue;
            }
            let Some(mine_us) = self.predict_us(slot, index) else {
                continue;
            };
            let task = *self.tasks.task(index);
            let holder = self.tasks.owner(index);
            let holder_us = self.holder_us(slot, holder as usize, index, mine_us);
            let choice = choose(
                mine_us,
                holder_us,
                last.running_us,
                last.held_us,
                last.left_us,
                self.may_yield(index).then(|| {
                    crate::pieces::piece_time(&self.workers[holder as usize].info.backend)
                }),
            );
            let (mine_us, holder_left_us) = (choice.mine_us, last.left_us);
            if choice.take == Take::Yield {
                // Better than a copy: the holder stops at the end of its piece and reports
                // what it did, and the rest is carved again, for this worker first (it
                // waits in the ready queue). Nothing is done twice.
                log::debug!(
                    "end game: {} yields the rest of chunk {} to {} ({:.0} ms against {:.0} ms left)",
                    printable(&self.workers[holder as usize].info.name),
                    task.id,
                    printable(&self.workers[slot].info.name),
                    mine_us / 1000.0,
                    holder_left_us / 1000.0
                );
                self.yielding.insert(task.id, now);
                out.push(self.ask_to_yield(holder, &task));
                continue;
            }
            if choice.take == Take::Leave {
                continue;
            }
            log::debug!(
                "end game: {} takes over task {} from {} ({:.0} ms against {:.0} ms left)",
                printable(&self.workers[slot].info.name),
                task.id,
                printable(&self.workers[holder as usize].info.name),
                mine_us / 1000.0,
                holder_left_us / 1000.0
            );
            self.release(holder, index);
            // The holder still computes its copy: it takes nothing new until it reports
            // (a task handed to it now would wait behind the copy, unseen by the end
            // game). One that runs the chunk in pieces stops at the end of the piece in
            // hand (asked once: a yield not answered yet still stands).
            self.workers[holder as usize].stalled = true;
            if self.in_pieces.remove(&task.id) && !self.yielding.contains_key(&task.id) {
                out.push(self.ask_to_yield(holder, &task));
            }
            self.ran_by.entry(index as u32).or_default().push(holder);
            self.tasks.transfer(index, slot as WorkerId);
            self.assigned_ms += u64::from(task.workload_ms);
            let worker = &mut self.workers[slot];
            worker.given.push_back((now, index as u32));
            worker.assigned += 1;
            worker.assigned_ms += u64::from(task.workload_ms);
            self.redispatched += 1;
            self.items_redone += u64::from(task.items);
            *self.taken_over.entry(index as u32).or_insert(0) += 1;
            self.send_tasks(slot as WorkerId, vec![task], vec![true], out);
        }
    }

    /// Among tasks other workers hold and that were not taken over [`MAX_TAKEOVERS`] times
    /// yet, the one whose holder is predicted to finish last, with how long it has left, in µs (tasks queued
    /// on a worker run one after another from its last report).
    pub(super) fn last_to_finish(
        &self,
        now: Instant,
        except: usize,
        fastest: bool,
    ) -> Option<LastToFinish> {
        let mut last: Option<LastToFinish> = None;
        for (h, holder) in self.workers.iter().enumerate() {
            if h == except || !holder.alive || holder.assigned == 0 {
                continue;
            }
            // Its tasks run one after another from its last report.
            let mut at = now
                .saturating_duration_since(holder.last_report)
                .as_secs_f64()
                * -1e6;
            for &(given, index) in &holder.given {
                let i = index as usize;
                if !self.tasks.assigned_to(i, h as WorkerId) {
                    continue;
                }
                let since = now.saturating_duration_since(given.max(holder.last_report));
                let took = self
                    .predict_us(h, i)
                    .unwrap_or_else(|| f64::from(self.tasks.task(i).workload_ms) * 1000.0);
                let start = at.max(-since.as_secs_f64() * 1e6);
                // A task past its prediction is taken to need as long again as it has
                // run: costs vary along a job, and a miss means this part is dearer.
                let running = (-start).max(0.0);
                at = start + took.max(2.0 * running);
                let takeovers = self.taken_over.get(&index).copied().unwrap_or(0);
                // A chunk asked to yield its tail is left to its worker for a while: the
                // rest comes back to be carved. One that was not cut by then is copied.
                let yielding = self
                    .yielding
                    .get(&index)
                    .is_some_and(|&asked| now.saturating_duration_since(asked) < YIELD_GRACE);
                let cap = MAX_TAKEOVERS + u8::from(fastest);
                if takeovers < cap && !yielding && last.is_none_or(|l| at > l.left_us) {
                    last = Some(LastToFinish {
                        index: i,
                        left_us: at,
                        running_us: running,
                        held_us: now.saturating_duration_since(given).as_secs_f64() * 1e6,
                    });
                }
            }
        }
        last
    }

    /// The command asking `holder` to stop `task` (a chunk it runs in pieces) at the end
    /// of the piece in hand and report what it did.
    fn ask_to_yield(&self, holder: WorkerId, task: &Task) -> Command {
        Command::ToWorker {
            worker: holder,
            message: Message::Yield {
                batch: self.config.batch_id,
                id: task.id,
                first: task.first,
            },
        }
    }

    /// Whether the chunk at `index` may be cut rather than copied: a chunk of more than one
    /// item whose worker runs it in pieces (`pieces::splits`), not asked before, never
    /// taken over (its first holder's copy would still compute the tail), and not in a
    /// replicated job (its copies are compared whole).
    pub(super) fn may_yield(&self, index: usize) -> bool {
        let task = self.tasks.task(index);
        let holder = &self.workers[self.tasks.owner(index) as usize];
        self.carver.is_some()
            && task.items > 1
            && self.in_pieces.contains(&task.id)
            && self.config.job.replicate_percent == 0
            && !self.yielding.contains_key(&task.id)
            && !self.taken_over.contains_key(&task.id)
            && !self.ran_by.contains_key(&task.id)
            && crate::pieces::splits(&self.config.job, &holder.info.backend)
    }

    /// What the holder of the task at `index` is predicted to take over it, for comparing
    /// with `mine_us`, what `slot` is: a chunk's by the holder's rate. A task list's tasks
    /// are declared alike however they cost, so the two smoothed paces may have been
    /// measured on tasks of very different costs (a slow worker's one band of sky against
    /// a fast one's run through the set, which made a copy look a hundred times too dear
    /// and left the band to the backup rule); the holder's prediction is then raised to
    /// `mine_us` scaled by the two workers' paces on the cheapest tasks each ran.
    fn holder_us(&self, slot: usize, holder: usize, index: usize, mine_us: f64) -> Option<f64> {
        if self.tasks.task(index).is_chunk() {
            return self.predict_us(holder, index);
        }
        let predicted = self.predict_us(holder, index);
        match (
            self.workers[slot].best_us_per_ms,
            self.workers[holder].best_us_per_ms,
        ) {
            // Only ever raised: a device's cheapest task is mostly its fixed cost per task
            // (a launch, a read-back), which would make it look slower than a cpu worker's
            // band of sky.
            (Some(mine), Some(theirs)) => {
                let compared = mine_us * theirs / mine.max(1e-9);
                Some(predicted.map_or(compared, |p| p.max(compared)))
            }
            _ => predicted,
        }
    }

    /// How long `slot` would take over the task at `index`, by its measured speed: a
    /// chunk's items at its rate, a task's workload at its µs per ms. `None` until it has
    /// reported one.
    pub(super) fn predict_us(&self, slot: usize, index: usize) -> Option<f64> {
        let task = *self.tasks.task(index);
        if task.is_chunk() {
            let rate = self.carver.as_ref()?.rate(slot)?;
            (rate > 0.0).then(|| f64::from(task.items) * 1e6 / rate)
        } else {
            let us_per_ms = self.workers[slot].us_per_ms?;
            Some(us_per_ms * f64::from(task.workload_ms))
        }
    }

    /// How long, in µs, the work not yet done takes the live workers at their measured
    /// speeds: a task queued behind others on a worker that cannot finish them within this
    /// would end the batch late (a straggler's second task), so it is not queued there.
    pub(super) fn horizon_us(&self) -> f64 {
        (self.tasks.pending_ms() + self.assigned_ms) as f64 * 1000.0 / self.speed.max(1e-9)
    }

    /// How long `slot` may hold a task of `workload_ms` before another worker is given a
    /// backup: `factor` times what its measured speed predicts (nominal speed until it
    /// reports), plus the slack.
    pub(super) fn straggle_bound(&self, slot: usize, workload_ms: u32) -> Duration {
        let us_per_ms = self.workers[slot].us_per_ms.unwrap_or(1000.0).max(1000.0);
        let expected_us = us_per_ms * f64::from(workload_ms) * self.config.backup.factor;
        self.config.backup.slack + Duration::from_secs_f64(expected_us.min(1e12) / 1e6)
    }

    /// Drops the front entries of a worker's list that no longer name a task it holds.
    pub(super) fn prune_given(&mut self, slot: usize) {
        while let Some(&(_, index)) = self.workers[slot].given.front() {
            let i = index as usize;
            let ours = self.tasks.outstanding_with(i, slot as u32);
            if ours {
                break;
            }
            self.workers[slot].given.pop_front();
        }
    }

    /// A task held far longer than its worker's speed predicts, by a worker that still
    /// heartbeats (a straggler, or a worker whose task thread is stuck), is handed to
    /// another worker as a backup, as MapReduce does: the first result wins and the other
    /// is a duplicate. The straggler gets no new tasks until it reports again. Looks at
    /// each worker's oldest task only. A chunk of a divisible job is backed up only when
    /// its worker falls silent: one that heartbeats is left to the end game (a stuck GPU
    /// task ends at the worker's `--task-timeout`).
    pub(super) fn back_up_stragglers(&mut self, now: Instant) {
        if self.alive < 2 {
            return;
        }
        for slot in 0..self.workers.len() {
            if !self.workers[slot].alive {
                continue;
            }
            self.prune_given(slot);
            let Some(&(given_at, index)) = self.workers[slot].given.front() else {
                continue;
            };
            // Silence short of the liveness timeout: a worker that missed a few heartbeats
            // while holding tasks is likely frozen; its tasks start elsewhere now rather
            // than when it is declared gone.
            let silent = now.saturating_duration_since(self.workers[slot].last_seen);
            let quiet = silent > self.config.heartbeat.interval * SILENT_BACKUP_BEATS;
            let i = index as usize;
            let bound = self.straggle_bound(slot, self.tasks.task(i).workload_ms);
            // A queued task waited behind the ones before it: its time runs from the later
            // of when it was given and the worker's last report.
            let since = given_at.max(self.workers[slot].last_report);
            let held_for = now.saturating_duration_since(since);
            // A chunk past its prediction on a worker that heartbeats is dear, not lost:
            // items vary in cost along a job, so a copy would only repeat the same dear
            // items. The end game moves it once nothing else is left to hand out.
            let straggling = self.tasks.state(i) == TaskState::Assigned
                && held_for > bound
                && !self.tasks.task(i).is_chunk();
            if !straggling && !quiet {
                continue;
            }
            // Every task it still holds unreported goes out again, oldest first.
            let held: Vec<u32> = self.workers[slot]
                .given
                .iter()
                .map(|&(_, index)| index)
                .filter(|&index| self.tasks.assigned_to(index as usize, slot as WorkerId))
                .collect();
            if held.is_empty() {
                continue;
            }
            self.workers[slot].stalled = true;
            self.workers[slot].stalled_silent = !straggling;
            let mut count = 0;
            for &index in held.iter().rev() {
                // A task bounced and given again appears twice in the list: once is enough.
                let i = index as usize;
                if self.tasks.assigned_to(i, slot as WorkerId) {
                    self.release(slot as WorkerId, i);
                    self.ran_by.entry(index).or_default().push(slot as WorkerId);
                    self.requeue(i);
                    count += 1;
                }
            }
            self.backups += count;
            let name = printable(&self.workers[slot].info.name).into_owned();
            let why = if straggling {
                format!(
                    "has held task {index} for {:.1} s (bound {:.1} s)",
                    held_for.as_secs_f64(),
                    bound.as_secs_f64()
                )
            } else {
                format!("has been silent for {:.1} s", silent.as_secs_f64())
            };
            self.gone_log.warn_at(now, || {
                format!(
                    "worker {name} {why}; handing its {count} unreported tasks to other workers as \
                     backups"
                )
            });
        }
    }

    /// A heartbeat to every live worker that holds tasks: one whose connection is gone
    /// fails at once and its tasks go to others.
    pub(super) fn probe_holders(&self, out: &mut Vec<Command>) {
        let beat = self.heartbeat();
        for (id, w) in self.workers.iter().enumerate() {
            if w.alive && w.assigned > 0 {
                out.push(Command::ToWorker {
                    worker: id as WorkerId,
                    message: beat.clone(),
                });
            }
        }
    }
}

/// What the end game does with the chunk or task predicted to end last, for one idle worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// Ask its holder to yield the items it has not started.
    Yield,
    /// Copy it to the idle worker; the first result wins.
    Copy,
    /// Leave it with its holder.
    Leave,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Choice {
    pub take: Take,
    /// What the idle worker is taken to need for the whole of it, in µs.
    pub mine_us: f64,
}

/// The end game's choice for one idle worker predicted to need `mine_us` for a task (or
/// chunk) whose holder was predicted to need `holder_us` (`None`: not measured yet), has
/// held it `held_us`, run it `running_us`, and is predicted to need `left_us` more; `pieces`: what a piece
/// takes its holder, where it runs it in pieces and can give up the rest.
///
/// What the holder has spent on it bounds what it costs: the taker needs at least that,
/// scaled by the two workers' measured speeds (a rate measured on cheap items says nothing
/// of a dear chunk). A holder not measured yet may be slow or its task dear: once it has
/// held it (`held_us`: running it, or queued behind what it runs) twice what the taker
/// predicts for itself, the taker's prediction stands (a copy costs an idle worker's
/// time). Counting only the time it ran it left a task queued behind an unmeasured
/// worker's first to the backup rule: bands weighed dearest first went two to each of
/// eight slow workers, and the fast one idled 1.3 s. A copy pays when the taker would finish a fifth sooner.
///
/// How long the holder's piece in hand may take: each is sized to take `pieces`
/// ([`crate::pieces::piece_time`]: the first by the chunk's prediction, the later ones by
/// the pieces' rate), so about that, slowed as much as the chunk has overrun its prediction
/// (items dearer than those the rate was measured on), but at most [`PIECE_OVERRUN_CAP`]
/// times: a guess, bounded. The first piece is at most a quarter of the chunk, so it is
/// usually over by the time a chunk has overrun far, and the piece in hand was sized at
/// the rate its predecessors ran, outlasting a piece's time only by how much dearer its
/// items are than theirs; where the first piece is still in hand (a chunk of two
/// predicted pieces running 25 times dearer), the chunk waits at most [`YIELD_GRACE`] and
/// is copied then, if a copy still pays. A yield pays when that wait is short beside what
/// a copy costs, and always where the holder's pieces are short. Where no copy pays (the
/// rates say the holder is as fast, measured on other items than these, or it is not
/// measured yet), a chunk with more than four device pieces' time (200 ms) left still
/// yields: its rest is carved again among the idle
/// workers, and its holder's rate learns from what it did. Not to an idle worker that
/// the holder is measured four times faster than ([`CLEAR_MARGIN`]): the rest, carved
/// for it first, would end later there than where it was (on a cpu worker beside eight
/// twenty times slower, the slow ones took the fast one's tails).
pub(super) fn choose(
    mine_us: f64,
    holder_us: Option<f64>,
    running_us: f64,
    held_us: f64,
    left_us: f64,
    pieces: Option<Duration>,
) -> Choice {
    let outpaced = holder_us.is_some_and(|holder_us| mine_us > CLEAR_MARGIN * holder_us);
    let scaled_us = match holder_us {
        Some(holder_us) => Some(mine_us.max(running_us * mine_us / holder_us.max(1.0))),
        None if held_us > 2.0 * mine_us => Some(mine_us),
        None => None,
    };
    let copy_pays = scaled_us.is_some_and(|mine| mine < left_us * 0.8);
    let mine_us = scaled_us.unwrap_or(mine_us);
    let may_yield = pieces.is_some();
    let piece_us = pieces.unwrap_or(crate::pieces::PIECE).as_secs_f64() * 1e6;
    let piece_wait_us = holder_us.map(|holder_us| {
        piece_us * (running_us / holder_us.max(1.0)).clamp(1.0, PIECE_OVERRUN_CAP)
    });
    // A holder whose pieces are short (a cpu worker's) yields whenever a copy would pay:
    // the wait is a few ms, and a copy's cost is a guess from rates measured on other
    // items (two cpu workers' rates, on dear rows and on cheap ones, differed 95 times,
    // and a copy predicted to take 9 ms redid 214 dear rows in 338 ms).
    let short = pieces.is_some_and(|p| p <= crate::pieces::FREE_PIECE);
    let quick = copy_pays && (short || piece_wait_us.is_none_or(|wait| wait < mine_us / 2.0));
    let rebalance =
        !copy_pays && !outpaced && left_us > 4.0 * crate::pieces::PIECE.as_secs_f64() * 1e6;
    let take = if may_yield && (quick || rebalance) {
        Take::Yield
    } else if copy_pays {
        Take::Copy
    } else {
        Take::Leave
    };
    Choice { take, mine_us }
}
