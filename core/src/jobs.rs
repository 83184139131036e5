//! The job queue of a long-running coordinator: jobs submitted, queued, running side by
//! side, finished, cancelled and expired; how the farm's workers are shared among the
//! running jobs; and the journal from which a restarted coordinator rebuilds the queue.
//!
//! Every change is a [`Record`]: the queue's methods append the record of what they did,
//! [`JobQueue::apply`] is the one place state changes, and [`JobQueue::replay`] of the
//! records rebuilds the same queue (a property test checks it after every step). The
//! shell writes the records to its journal before acting on them. Time arrives as Unix
//! milliseconds; nothing here reads a clock, a file or a socket.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job's number on its coordinator, given in order of submission from 1.
pub type JobId = u64;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, waiting for a place among the running jobs.
    Queued,
    /// Its batch is out: workers run its tasks.
    Running,
    /// Complete: every task held.
    Done,
    /// Stopped by an error (a task given up on, a kernel no worker can run).
    Failed,
    /// Stopped by the operator; what was done stays kept.
    Cancelled,
}

impl JobState {
    /// Done, failed or cancelled: it holds no worker and changes no more.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }

    /// Its name as `conquer jobs` prints it (and as its JSON spells it).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the queue needs to know of a job (the batch itself lives in the job's folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What the submitter calls it (the tasks file, the kernel).
    pub name: String,
    /// Its weight in the fair share (`--priority`, at least 1).
    pub priority: u32,
    /// It runs a data kernel: a sleep-only worker cannot take its tasks.
    pub needs_compute: bool,
    /// Bytes of inputs that travelled with the submission.
    pub input_bytes: u64,
    /// Its tasks (a task list's length).
    pub tasks: u64,
}

/// A job on the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// Why it failed or who cancelled it.
    pub reason: String,
    /// What an over job's results hold (its tasks, or a divisible job's items), counted at
    /// its end: what `jobs` says of a cancelled or failed job after a restart.
    pub held: Option<u64>,
}

/// One change to the queue, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    Submitted {
        id: JobId,
        spec: JobSpec,
        at_ms: u64,
    },
    Started {
        id: JobId,
        at_ms: u64,
    },
    Ended {
        id: JobId,
        state: JobState,
        at_ms: u64,
        reason: String,
    },
    /// What an over job's results hold, counted once its batch stopped.
    Held {
        id: JobId,
        held: u64,
    },
    /// Forgotten: its entry is dropped (its files may be removed).
    Expired {
        id: JobId,
    },
    /// The next job's id (a rewritten journal keeps the count of jobs expired).
    Numbered {
        next_id: JobId,
    },
}

/// What the coordinator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs queued and running at once.
    pub max_jobs: usize,
    /// Jobs running side by side; the rest wait in order of submission.
    pub max_running: usize,
    /// Bytes of inputs one submission may carry.
    pub max_input_bytes: u64,
    /// Finished jobs kept (their reports and results); older ones expire.
    pub keep: usize,
    /// And for at most this long after they ended (ms; 0: no limit by age).
    pub keep_ms: u64,
}

/// Why a submission or a cancel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the queue is full ({0} jobs queued or running): wait for some to finish, or raise --max-jobs on the coordinator")]
    QueueFull(usize),
    #[error("the job's inputs are {bytes} bytes, over the coordinator's --max-input {max}: name them on the coordinator's disk instead (submit --inputs-on-coordinator, under its --inputs-dir), or raise the limit there")]
    InputsTooLarge { bytes: u64, max: u64 },
    #[error("a job's priority is at least 1 (got 0)")]
    ZeroPriority,
    #[error("no job {0} on this coordinator (`conquer jobs` lists them)")]
    NoSuchJob(JobId),
    #[error("job {0} is no longer kept: finished jobs past --keep (or --keep-for) are removed with their folders")]
    NoLongerKept(JobId),
    #[error("job {id} is already {state}, so it cannot be cancelled")]
    AlreadyOver { id: JobId, state: JobState },
}

/// A worker as the fair share sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerKind {
    /// It computes (a GPU, the software adapter, the CPU): it can run data kernels.
    pub computes: bool,
}

/// The queue: every job not yet expired, by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQueue {
    jobs: BTreeMap<JobId, Job>,
    next_id: JobId,
}

impl JobQueue {
    pub fn new() -> JobQueue {
        JobQueue {
            jobs: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// The queue the records describe, in order (a journal read back on a restart).
    pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> JobQueue {
        let mut queue = JobQueue::new();
        for record in records {
            queue.apply(record);
        }
        queue
    }

    /// The one place the queue changes. A record that does not fit (a job unknown, or
    /// over) changes nothing: a journal cut short by a crash replays to what it holds.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Submitted { id, spec, at_ms } => {
                self.next_id = self.next_id.max(id + 1);
                self.jobs.entry(*id).or_insert_with(|| Job {
                    id: *id,
                    spec: spec.clone(),
                    state: JobState::Queued,
                    submitted_ms: *at_ms,
                    started_ms: None,
                    ended_ms: None,
                    reason: String::new(),
                    held: None,
                });
            }
            Record::Started { id, at_ms } => {
                if let Some(job) = self
                    .jobs
                    .get_mut(id)
                    .filter(|j| j.state == JobState::Queued)
                {
                    job.state = JobState::Running;
                    job.started_ms = Some(*at_ms);
                }
            }
            Record::Ended {
                id,
                state,
                at_ms,
                reason,
            } => {
                if let Some(job) = self.jobs.get_mut(id).filter(|j| !j.state.is_over()) {
                    if state.is_over() {
                        job.state = *state;
                        job.ended_ms = Some(*at_ms);
                        job.reason = reason.clone();
                    }
                }
            }
            Record::Held { id, held } => {
                if let Some(job) = self.jobs.get_mut(id).filter(|j| j.state.is_over()) {
                    job.held = Some(*held);
                }
            }
            Record::Expired { id } => {
                if self.jobs.get(id).is_some_and(|j| j.state.is_over()) {
                    self.jobs.remove(id);
                }
            }
            Record::Numbered { next_id } => self.next_id = self.next_id.max(*next_id),
        }
    }

    fn record(&mut self, record: Record, out: &mut Vec<Record>) {
        self.apply(&record);
        out.push(record);
    }

    /// The id the next job accepted gets.
    /// Why job `id` is not in the queue: never numbered, or removed once over.
    pub fn missing(&self, id: JobId) -> Refused {
        if (1..self.next_id).contains(&id) {
            Refused::NoLongerKept(id)
        } else {
            Refused::NoSuchJob(id)
        }
    }

    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Every job kept, oldest first.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn running(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().filter(|j| j.state == JobState::Running)
    }

    /// Accepts a job within the limits: queued, and started at once if there is room.
    pub fn submit(
        &mut self,
        spec: JobSpec,
        limits: &Limits,
        now_ms: u64,
        out: &mut Vec<Record>,
    ) -> Result<JobId, Refused> {
        if spec.priority == 0 {
            return Err(Refused::ZeroPriority);
        }
        if spec.input_bytes > limits.max_input_bytes {
            return Err(Refused::InputsTooLarge {
                bytes: spec.input_bytes,
                max: limits.max_input_bytes,
            });
        }
        let live = self.jobs.values().filter(|j| !j.state.is_over()).count();
        if live >= limits.max_jobs {
            return Err(Refused::QueueFull(live));
        }
        let id = self.next_id;
        self.record(
            Record::Submitted {
                id,
                spec,
                at_ms: now_ms,
            },
            out,
        );
        self.start_queued(limits, now_ms, out);
        Ok(id)
    }

    /// Starts queued jobs, oldest first, while fewer than `max_running` run.
    pub fn start_queued(&mut self, limits: &Limits, now_ms: u64, out: &mut Vec<Record>) {
        let running = self.running().count();
        let starting: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .take(limits.max_running.saturating_sub(running))
            .map(|j| j.id)
            .collect();
        for id in starting {
            self.record(Record::Started { id, at_ms: now_ms }, out);
        }
    }

    /// A running job ended (done or failed): its place goes to the next queued one, and
    /// finished jobs past `keep` expire.
    pub fn end(
        &mut self,
        id: JobId,
        state: JobState,
        reason: &str,
        limits: &Limits,
        now_ms: u64,
        out: &mut Vec<Record>,
    ) {
        if !state.is_over() || self.get(id).is_none_or(|j| j.state.is_over()) {
            return;
        }
        self.record(
            Record::Ended {
                id,
                state,
                at_ms: now_ms,
                reason: reason.to_string(),
            },
            out,
        );
        self.start_queued(limits, now_ms, out);
        self.expire(limits, now_ms, out);
    }

    /// Cancels a queued or running job (a running one's workers abandon its tasks).
    pub fn cancel(
        &mut self,
        id: JobId,
        who: &str,
        limits: &Limits,
        now_ms: u64,
        out: &mut Vec<Record>,
    ) -> Result<JobState, Refused> {
        let job = self.get(id).ok_or_else(|| self.missing(id))?;
        if job.state.is_over() {
            return Err(Refused::AlreadyOver {
                id,
                state: job.state,
            });
        }
        let was = job.state;
        self.end(
            id,
            JobState::Cancelled,
            &format!("cancelled by {who}"),
            limits,
            now_ms,
            out,
        );
        Ok(was)
    }

    /// Finished jobs beyond the newest `keep` (by when they ended), and those that ended
    /// `keep_ms` or longer before `now_ms`, are forgotten.
    pub fn expire(&mut self, limits: &Limits, now_ms: u64, out: &mut Vec<Record>) {
        let mut over: Vec<(u64, JobId)> = self
            .jobs
            .values()
            .filter(|j| j.state.is_over())
            .map(|j| (j.ended_ms.unwrap_or(0), j.id))
            .collect();
        over.sort_unstable();
        let by_count = over.len().saturating_sub(limits.keep);
        let by_age = match limits.keep_ms {
            0 => 0,
            age => over
                .iter()
                .take_while(|(ended, _)| ended.saturating_add(age) <= now_ms)
                .count(),
        };
        for &(_, id) in &over[..by_count.max(by_age)] {
            self.record(Record::Expired { id }, out);
        }
    }

    /// Records what over job `id`'s results hold (nothing for a job not over, or gone).
    pub fn count_held(&mut self, id: JobId, held: u64, out: &mut Vec<Record>) {
        if self.get(id).is_some_and(|j| j.state.is_over()) {
            self.record(Record::Held { id, held }, out);
        }
    }

    /// The fewest records that rebuild this queue: what a journal is rewritten to, so it
    /// grows with the jobs kept, not with every job ever run.
    pub fn snapshot(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for job in self.jobs.values() {
            records.push(Record::Submitted {
                id: job.id,
                spec: job.spec.clone(),
                at_ms: job.submitted_ms,
            });
            if let Some(at_ms) = job.started_ms {
                records.push(Record::Started { id: job.id, at_ms });
            }
            if let (true, Some(at_ms)) = (job.state.is_over(), job.ended_ms) {
                records.push(Record::Ended {
                    id: job.id,
                    state: job.state,
                    at_ms,
                    reason: job.reason.clone(),
                });
                if let Some(held) = job.held {
                    records.push(Record::Held { id: job.id, held });
                }
            }
        }
        // Ids are never reused, even those of jobs expired since.
        records.push(Record::Numbered {
            next_id: self.next_id,
        });
        records
    }

    /// The running jobs as the fair share sees them.
    pub fn claims(&self) -> Vec<Claim> {
        self.running().map(Claim::from).collect()
    }

    /// Which running job each worker serves ([`share`] among the running jobs).
    pub fn share(&self, workers: &[WorkerKind]) -> Vec<Option<JobId>> {
        share(&self.claims(), workers)
    }
}

/// A running job as the fair share sees it: its weight and whether it needs a computing
/// worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: JobId,
    pub priority: u32,
    pub needs_compute: bool,
    /// The most workers it may hold at once (the rest go to other jobs, or wait).
    pub most: usize,
}

impl From<&Job> for Claim {
    fn from(job: &Job) -> Claim {
        Claim {
            id: job.id,
            priority: job.spec.priority,
            needs_compute: job.spec.needs_compute,
            most: usize::MAX,
        }
    }
}

impl Claim {
    fn takes(&self, worker: WorkerKind) -> bool {
        worker.computes || !self.needs_compute
    }
}

/// Which of the `running` jobs each worker serves: by weight (`priority`), each worker to
/// the job it can run that has the least share per weight so far, the workers that can
/// run fewer jobs placed first, ties to the older job. A job no worker can run gets none
/// and takes none from the others; a worker no running job can use serves none. With
/// every worker able to run every job, no job could gain by taking a worker from another
/// without that one falling below it (the largest-remainder shares of the weights, to one
/// worker).
pub fn share(running: &[Claim], workers: &[WorkerKind]) -> Vec<Option<JobId>> {
    share_barred(running, workers, &[])
}

/// [`share`], where worker `i` runs none of the jobs in `barred[i]` (those it declined or
/// that refused it; a missing entry bars nothing), and no job holds more than its `most`.
pub fn share_barred(
    running: &[Claim],
    workers: &[WorkerKind],
    barred: &[Vec<JobId>],
) -> Vec<Option<JobId>> {
    let can = |i: usize, j: &Claim| {
        j.takes(workers[i]) && barred.get(i).is_none_or(|b| !b.contains(&j.id))
    };
    let mut order: Vec<usize> = (0..workers.len()).collect();
    // The most constrained first: a worker that can run fewer jobs has fewer places.
    order.sort_by_key(|&i| running.iter().filter(|j| can(i, j)).count());
    let mut given = vec![0u64; running.len()];
    let mut share = vec![None; workers.len()];
    for i in order {
        let best = running
            .iter()
            .enumerate()
            .filter(|(k, j)| can(i, j) && (given[*k] as usize) < j.most)
            // Least (given + 1) / weight first, compared without division.
            .min_by(|(a, ja), (b, jb)| {
                let lhs = (given[*a] + 1) * u64::from(jb.priority);
                let rhs = (given[*b] + 1) * u64::from(ja.priority);
                lhs.cmp(&rhs).then(ja.id.cmp(&jb.id))
            });
        if let Some((k, job)) = best {
            given[k] += 1;
            share[i] = Some(job.id);
        }
    }
    share
}

/// [`share`], moving as few workers as it can from where they are (`now`, a job each or
/// none, by worker): the share fixes how many workers of each kind a job gets, and a
/// worker stays on its job while that job has room for one of its kind. A worker moved
/// loses what it had in hand, so a job that starts or ends moves only the workers its
/// share takes or frees.
pub fn place(
    running: &[Claim],
    workers: &[WorkerKind],
    now: &[Option<JobId>],
) -> Vec<Option<JobId>> {
    place_barred(running, workers, &[], now)
}

/// [`place`] with [`share_barred`]'s bars: a worker stays on or goes to a job only where it
/// is not barred.
pub fn place_barred(
    running: &[Claim],
    workers: &[WorkerKind],
    barred: &[Vec<JobId>],
    now: &[Option<JobId>],
) -> Vec<Option<JobId>> {
    let target = share_barred(running, workers, barred);
    let allowed = |i: usize, id: JobId| barred.get(i).is_none_or(|b| !b.contains(&id));
    // Room per (kind, job): how many workers of that kind the share gives the job.
    let mut room: BTreeMap<(bool, JobId), usize> = BTreeMap::new();
    for (w, t) in workers.iter().zip(&target) {
        if let Some(id) = t {
            *room.entry((w.computes, *id)).or_default() += 1;
        }
    }
    let mut placed = vec![None; workers.len()];
    // Those that stay first, then the rest: to where the share put them if there is room
    // still, else to any room left of their kind that they may take.
    for (i, w) in workers.iter().enumerate() {
        if let Some(Some(id)) = now.get(i) {
            if !allowed(i, *id) {
                continue;
            }
            if let Some(left) = room.get_mut(&(w.computes, *id)).filter(|n| **n > 0) {
                *left -= 1;
                placed[i] = Some(*id);
            }
        }
    }
    for (i, w) in workers.iter().enumerate() {
        if placed[i].is_some() {
            continue;
        }
        let own = target[i].filter(|id| room.get(&(w.computes, *id)).is_some_and(|n| *n > 0));
        let pick = own.or_else(|| {
            room.iter()
                .find(|((computes, id), left)| {
                    *computes == w.computes && **left > 0 && allowed(i, *id)
                })
                .map(|((_, id), _)| *id)
        });
        if let Some(id) = pick {
            if let Some(left) = room.get_mut(&(w.computes, id)) {
                *left -= 1;
            }
            placed[i] = Some(id);
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(priority: u32, needs_compute: bool) -> JobSpec {
        JobSpec {
            name: "job".into(),
            priority,
            needs_compute,
            input_bytes: 0,
            tasks: 1,
        }
    }

    const LIMITS: Limits = Limits {
        max_jobs: 8,
        max_running: 3,
        max_input_bytes: 1 << 20,
        keep: 4,
        keep_ms: 0,
    };

    #[test]
    fn a_job_removed_once_over_is_told_apart_from_one_never_submitted() {
        let (mut q, mut journal) = (JobQueue::new(), Vec::new());
        let limits = Limits { keep: 1, ..LIMITS };
        let ids: Vec<JobId> = (0..3)
            .map(|_| q.submit(spec(1, false), &limits, 0, &mut journal).unwrap())
            .collect();
        for &id in &ids {
            q.start_queued(&limits, 0, &mut journal);
            q.end(id, JobState::Done, "", &limits, 0, &mut journal);
        }
        assert!(q.get(ids[0]).is_none(), "past --keep 1");
        assert_eq!(q.missing(ids[0]), Refused::NoLongerKept(ids[0]));
        assert_eq!(q.missing(99), Refused::NoSuchJob(99));
        assert!(q.missing(ids[0]).to_string().contains("--keep"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit {
            priority: u32,
            needs_compute: bool,
            input_bytes: u64,
        },
        End {
            pick: usize,
            failed: bool,
        },
        Cancel {
            pick: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..4, any::<bool>(), prop_oneof![Just(0u64), Just(2u64 << 20)])
                .prop_map(|(priority, needs_compute, input_bytes)| Op::Submit {
                    priority,
                    needs_compute,
                    input_bytes
                }),
            2 => (0usize..16, any::<bool>()).prop_map(|(pick, failed)| Op::End { pick, failed }),
            1 => (0usize..16).prop_map(|pick| Op::Cancel { pick }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// After any submissions, ends and cancels: the journal replays to the same queue,
        /// and so does its snapshot; ids are never reused; at most `max_running` run and a
        /// job waits only while they do; at most `keep` finished jobs are kept.
        #[test]
        fn the_journal_rebuilds_the_queue_and_the_limits_hold(
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let mut q = JobQueue::new();
            let mut journal = Vec::new();
            let mut ids = Vec::new();
            for (t, op) in ops.into_iter().enumerate() {
                let now = t as u64 * 10;
                match op {
                    Op::Submit { priority, needs_compute, input_bytes } => {
                        let spec = JobSpec { input_bytes, ..spec(priority, needs_compute) };
                        let live = q.jobs().filter(|j| !j.state.is_over()).count();
                        match q.submit(spec, &LIMITS, now, &mut journal) {
                            Ok(id) => {
                                prop_assert!(!ids.contains(&id), "id {} reused", id);
                                ids.push(id);
                            }
                            Err(Refused::ZeroPriority) => prop_assert_eq!(priority, 0),
                            Err(Refused::InputsTooLarge { .. }) => {
                                prop_assert!(input_bytes > LIMITS.max_input_bytes)
                            }
                            Err(Refused::QueueFull(n)) => {
                                prop_assert_eq!(n, live);
                                prop_assert!(n >= LIMITS.max_jobs);
                            }
                            Err(e) => prop_assert!(false, "{e}"),
                        }
                    }
                    Op::End { pick, failed } => {
                        let running: Vec<JobId> = q.running().map(|j| j.id).collect();
                        if let Some(&id) = running.get(pick % running.len().max(1)) {
                            let state = if failed { JobState::Failed } else { JobState::Done };
                            q.end(id, state, "", &LIMITS, now, &mut journal);
                        }
                    }
                    Op::Cancel { pick } => {
                        if let Some(&id) = ids.get(pick % ids.len().max(1)) {
                            let before = q.get(id).map(|j| j.state);
                            match q.cancel(id, "test", &LIMITS, now, &mut journal) {
                                Ok(was) => prop_assert_eq!(Some(was), before),
                                // Every id here was numbered: one gone was removed once over.
                                Err(Refused::NoLongerKept(_)) => prop_assert_eq!(before, None),
                                Err(Refused::AlreadyOver { .. }) => {
                                    prop_assert!(before.is_some_and(JobState::is_over))
                                }
                                Err(e) => prop_assert!(false, "{e}"),
                            }
                            if before.is_some_and(|s| !s.is_over()) {
                                // Cancelled, unless it expired at once (keep exceeded).
                                prop_assert!(q.get(id).is_none_or(|j| j.state == JobState::Cancelled));
                            }
                        }
                    }
                }
                prop_assert_eq!(&JobQueue::replay(&journal), &q);
                prop_assert_eq!(&JobQueue::replay(&q.snapshot()), &q);
                let running = q.running().count();
                let queued = q.jobs().filter(|j| j.state == JobState::Queued).count();
                prop_assert!(running <= LIMITS.max_running);
                prop_assert!(queued == 0 || running == LIMITS.max_running);
                prop_assert!(q.jobs().filter(|j| j.state.is_over()).count() <= LIMITS.keep);
            }
        }

        /// The fair share: every worker a running job can use serves one it can run, a job
        /// no worker can run blocks nobody, and with every worker able to run every job
        /// no move of one worker from a job to another makes the shares fairer.
        #[test]
        fn workers_are_shared_by_weight_and_never_idle_when_a_job_can_use_them(
            jobs in proptest::collection::vec((1u32..5, any::<bool>()), 0..6),
            workers in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let mut q = JobQueue::new();
            let limits = Limits { max_running: 6, ..LIMITS };
            let mut journal = Vec::new();
            for &(priority, needs_compute) in &jobs {
                q.submit(spec(priority, needs_compute), &limits, 0, &mut journal).unwrap();
            }
            let kinds: Vec<WorkerKind> =
                workers.iter().map(|&computes| WorkerKind { computes }).collect();
            let share = q.share(&kinds);
            for (w, s) in kinds.iter().zip(&share) {
                let usable = q.running().any(|j| w.computes || !j.spec.needs_compute);
                match s {
                    Some(id) => {
                        let job = q.get(*id).unwrap();
                        prop_assert!(w.computes || !job.spec.needs_compute);
                    }
                    None => prop_assert!(!usable),
                }
            }
            if kinds.iter().all(|w| w.computes) {
                let running: Vec<&Job> = q.running().collect();
                let n = |id: JobId| share.iter().filter(|s| **s == Some(id)).count() as u64;
                for a in &running {
                    for b in &running {
                        // Taking one of a's workers for b would leave a below where b is.
                        let (na, nb) = (n(a.id), n(b.id));
                        let (wa, wb) = (u64::from(a.spec.priority), u64::from(b.spec.priority));
                        prop_assert!(
                            na == 0 || na * wb <= (nb + 1) * wa,
                            "{} workers for weight {} against {} for weight {}", na, wa, nb, wb
                        );
                    }
                }
            }
        }
    }

    proptest! {
        /// A placement gives every job the share's count of each kind of worker, and moves
        /// no worker whose job still has room for it: for every kind and job, the workers
        /// kept there are as many as were there, up to the share.
        #[test]
        fn a_placement_keeps_the_share_and_moves_only_what_it_must(
            jobs in proptest::collection::vec((1u32..5, any::<bool>()), 0..6),
            workers in proptest::collection::vec((any::<bool>(), 0usize..8), 0..40),
        ) {
            let running: Vec<Claim> = jobs
                .iter()
                .enumerate()
                .map(|(i, &(priority, needs_compute))| Claim {
                    id: i as JobId + 1,
                    priority,
                    needs_compute,
                    most: usize::MAX,
                })
                .collect();
            let kinds: Vec<WorkerKind> =
                workers.iter().map(|&(computes, _)| WorkerKind { computes }).collect();
            // Where each worker is now: a running job, a job gone (id 99), or none.
            let now: Vec<Option<JobId>> = workers
                .iter()
                .map(|&(_, at)| match at {
                    0 => None,
                    7 => Some(99),
                    k => (k <= running.len()).then_some(k as JobId),
                })
                .collect();
            let target = share(&running, &kinds);
            let placed = place(&running, &kinds, &now);
            let count = |of: &[Option<JobId>], computes: bool, id: JobId| {
                kinds
                    .iter()
                    .zip(of)
                    .filter(|(w, s)| w.computes == computes && **s == Some(id))
                    .count()
            };
            for job in &running {
                for computes in [false, true] {
                    let (want, got) = (count(&target, computes, job.id), count(&placed, computes, job.id));
                    prop_assert_eq!(want, got);
                    let kept = kinds
                        .iter()
                        .zip(now.iter().zip(&placed))
                        .filter(|(w, (n, p))| {
                            w.computes == computes && **n == Some(job.id) && **p == Some(job.id)
                        })
                        .count();
                    prop_assert_eq!(kept, count(&now, computes, job.id).min(want));
                }
            }
            // Idle only when the share leaves it idle.
            for (p, t) in placed.iter().zip(&target) {
                prop_assert_eq!(p.is_none(), t.is_none());
            }
        }
    }

    #[test]
    fn a_worker_barred_from_a_job_serves_the_others_and_a_capped_job_leaves_room() {
        let kinds = [WorkerKind { computes: true }; 4];
        let claim = |id, most| Claim {
            id,
            priority: 1,
            needs_compute: true,
            most,
        };
        // Worker 0 declined job 1: it serves job 2, whatever the share would say.
        let barred = vec![vec![1], vec![], vec![], vec![]];
        let placed = place_barred(
            &[claim(1, usize::MAX), claim(2, usize::MAX)],
            &kinds,
            &barred,
            &[Some(1); 4],
        );
        assert_eq!(placed[0], Some(2));
        assert_eq!(placed.iter().filter(|p| **p == Some(1)).count(), 2);
        // Barred from the only job: idle, not on it.
        let alone = place_barred(&[claim(1, usize::MAX)], &kinds, &barred, &[Some(1); 4]);
        assert_eq!(alone, [None, Some(1), Some(1), Some(1)]);
        // A job capped at one worker takes one; the others go to the next.
        let capped = share(&[claim(1, 1), claim(2, usize::MAX)], &kinds);
        assert_eq!(capped.iter().filter(|p| **p == Some(1)).count(), 1);
        assert_eq!(capped.iter().filter(|p| **p == Some(2)).count(), 3);
    }

    #[test]
    fn a_new_job_takes_half_of_a_running_jobs_workers_and_gives_them_back_when_it_ends() {
        let sleep = [WorkerKind { computes: false }; 4];
        let claim = |id| Claim {
            id,
            priority: 1,
            needs_compute: false,
            most: usize::MAX,
        };
        let alone = place(&[claim(1)], &sleep, &[None; 4]);
        assert_eq!(alone, [Some(1); 4]);
        let both = place(&[claim(1), claim(2)], &sleep, &alone);
        assert_eq!(both.iter().filter(|p| **p == Some(1)).count(), 2);
        assert_eq!(both.iter().filter(|p| **p == Some(2)).count(), 2);
        // Job 1 ends: its two workers go to job 2, whose own two stay.
        let after = place(&[claim(2)], &sleep, &both);
        assert_eq!(after, [Some(2); 4]);
    }

    #[test]
    fn finished_jobs_expire_by_age_as_well_as_by_count() {
        let limits = Limits {
            keep: 10,
            keep_ms: 1_000,
            ..LIMITS
        };
        let mut q = JobQueue::new();
        let mut out = Vec::new();
        let old = q.submit(spec(1, false), &limits, 0, &mut out).unwrap();
        let young = q.submit(spec(1, false), &limits, 0, &mut out).unwrap();
        q.end(old, JobState::Done, "", &limits, 100, &mut out);
        q.end(young, JobState::Done, "", &limits, 900, &mut out);
        q.expire(&limits, 1_099, &mut out);
        assert_eq!(q.jobs().count(), 2);
        q.expire(&limits, 1_100, &mut out);
        assert!(q.get(old).is_none() && q.get(young).is_some());
        // A replay agrees.
        assert_eq!(JobQueue::replay(&out), q);
    }

    #[test]
    fn a_job_of_weight_three_gets_three_workers_for_each_of_weight_one() {
        let mut q = JobQueue::new();
        let mut journal = Vec::new();
        let heavy = q.submit(spec(3, false), &LIMITS, 0, &mut journal).unwrap();
        let light = q.submit(spec(1, false), &LIMITS, 0, &mut journal).unwrap();
        let share = q.share(&[WorkerKind { computes: false }; 8]);
        let n = |id| share.iter().filter(|s| **s == Some(id)).count();
        assert_eq!((n(heavy), n(light)), (6, 2));
        // Equal weights: equal halves.
        let mut q = JobQueue::new();
        let a = q.submit(spec(1, false), &LIMITS, 0, &mut journal).unwrap();
        let b = q.submit(spec(1, false), &LIMITS, 0, &mut journal).unwrap();
        let share = q.share(&[WorkerKind { computes: true }; 4]);
        let n = |id| share.iter().filter(|s| **s == Some(id)).count();
        assert_eq!((n(a), n(b)), (2, 2));
    }

    #[test]
    fn a_data_job_takes_only_computing_workers_and_a_finished_job_frees_them_at_once() {
        let mut q = JobQueue::new();
        let mut out = Vec::new();
        let data = q.submit(spec(1, true), &LIMITS, 0, &mut out).unwrap();
        let sleep = q.submit(spec(1, false), &LIMITS, 0, &mut out).unwrap();
        let workers = [
            WorkerKind { computes: false },
            WorkerKind { computes: false },
            WorkerKind { computes: true },
            WorkerKind { computes: true },
        ];
        // The sleep workers can serve only the sleep job, so both computing ones go to
        // the data job: two each.
        assert_eq!(
            q.share(&workers),
            [Some(sleep), Some(sleep), Some(data), Some(data)]
        );
        q.end(data, JobState::Done, "", &LIMITS, 10, &mut out);
        assert_eq!(q.share(&workers), [Some(sleep); 4]);
    }

    #[test]
    fn what_an_over_job_held_survives_a_replay_and_a_rewrite() {
        let (mut q, mut journal) = (JobQueue::new(), Vec::new());
        let id = q.submit(spec(1, false), &LIMITS, 0, &mut journal).unwrap();
        q.start_queued(&LIMITS, 1, &mut journal);
        // Not over yet: nothing to count.
        q.count_held(id, 3, &mut journal);
        assert_eq!(q.get(id).unwrap().held, None);
        q.cancel(id, "test", &LIMITS, 2, &mut journal).unwrap();
        q.count_held(id, 7, &mut journal);
        assert_eq!(q.get(id).unwrap().held, Some(7));
        let replayed = JobQueue::replay(&journal);
        assert_eq!(replayed.get(id).unwrap().held, Some(7));
        let rewritten = JobQueue::replay(&replayed.snapshot());
        assert_eq!(rewritten.get(id), q.get(id));
    }

    #[test]
    fn the_journal_is_json_lines_a_person_can_read() {
        let record = Record::Ended {
            id: 7,
            state: JobState::Cancelled,
            at_ms: 1_000,
            reason: "cancelled by alice".into(),
        };
        let line = serde_json::to_string(&record).unwrap();
        assert_eq!(
            line,
            r#"{"record":"ended","id":7,"state":"cancelled","at_ms":1000,"reason":"cancelled by alice"}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
    }
}
