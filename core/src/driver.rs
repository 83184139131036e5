//! The one loop that runs every role's state machine: events in, each one's commands
//! carried out before the next, a command that failed answered at once, a tick after
//! every round, and a wait until the machine's next deadline.
//!
//! The machines ([`crate::dispatch::Dispatcher`], [`crate::collect::Collector`],
//! [`crate::flow::Flow`]) say what to do; a [`Host`] does it: the ZeroMQ pumps in
//! production, the model network in the dispatcher's property test, the virtual-time
//! network in the simulator. A [`Transport`] is a host that also waits for input, so
//! [`run`] can drive it. This module knows no socket and reads no clock: the host says
//! what time it is.

use std::time::Instant;

/// A role's state machine, as the driver sees it.
pub trait Machine {
    /// What happened: a message, a send that failed, a tick.
    type Event;
    /// What to do, in order.
    type Command;
    /// The event that says everything waiting has been read (or a deadline passed): run
    /// what is due.
    fn tick() -> Self::Event;
    fn handle(&mut self, now: Instant, event: Self::Event, out: &mut Vec<Self::Command>);
    /// The earliest time something is due without any input.
    fn next_deadline(&self) -> Instant;
}

impl Machine for crate::dispatch::Dispatcher {
    type Event = crate::dispatch::Event;
    type Command = crate::dispatch::Command;
    fn tick() -> Self::Event {
        crate::dispatch::Event::Tick
    }
    fn handle(&mut self, now: Instant, event: Self::Event, out: &mut Vec<Self::Command>) {
        crate::dispatch::Dispatcher::handle(self, now, event, out)
    }
    fn next_deadline(&self) -> Instant {
        crate::dispatch::Dispatcher::next_deadline(self)
    }
}

impl Machine for crate::collect::Collector {
    type Event = crate::collect::SinkEvent;
    type Command = crate::collect::SinkCommand;
    fn tick() -> Self::Event {
        crate::collect::SinkEvent::Tick
    }
    fn handle(&mut self, now: Instant, event: Self::Event, out: &mut Vec<Self::Command>) {
        crate::collect::Collector::handle(self, now, event, out)
    }
    fn next_deadline(&self) -> Instant {
        crate::collect::Collector::next_deadline(self)
    }
}

impl Machine for crate::flow::Flow {
    type Event = crate::flow::FlowEvent;
    type Command = crate::flow::FlowCommand;
    fn tick() -> Self::Event {
        crate::flow::FlowEvent::Tick
    }
    fn handle(&mut self, now: Instant, event: Self::Event, out: &mut Vec<Self::Command>) {
        crate::flow::Flow::handle(self, now, event, out)
    }
    fn next_deadline(&self) -> Instant {
        crate::flow::Flow::next_deadline(self)
    }
}

/// Whether a machine's work goes on after the commands carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Going,
    /// Done: the batch complete (a ventilator, a sink), the worker asked to leave.
    Over,
}

impl Progress {
    fn and(self, other: Progress) -> Progress {
        if self == Progress::Over || other == Progress::Over {
            Progress::Over
        } else {
            Progress::Going
        }
    }
}

/// What carries out a machine's commands, and owns it.
pub trait Host {
    type Machine: Machine;
    /// Why the host cannot go on (a socket failed, the disk is full, a fatal stop).
    type Error;
    fn machine(&mut self) -> &mut Self::Machine;
    /// The time now, as the machine is to see it.
    fn now(&self) -> Instant;
    /// Carries out `commands` in order, draining them (the driver reuses the vector). A
    /// command that failed (a send to a peer gone, a full queue) answers with an event in
    /// `failed`: the driver hands those to the machine before anything else, and what
    /// follows from them comes back here. Called once after every event even without
    /// commands, so work of the host's own that waits (records waiting for their output
    /// files) is released.
    fn carry_out(
        &mut self,
        commands: &mut Vec<<Self::Machine as Machine>::Command>,
        failed: &mut Vec<<Self::Machine as Machine>::Event>,
    ) -> Result<Progress, Self::Error>;
    /// Every event the machine handles, in order, just before it does (a replay's trace).
    fn record(&mut self, _event: &<Self::Machine as Machine>::Event) {}
}

/// A host whose input arrives over time.
pub trait Transport: Host {
    /// Before each wait for input (never between input received and handled): a shutdown
    /// asked for ends the run here.
    fn check(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// After each round's commands are carried out: views refreshed, progress drawn.
    fn after_round(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Waits until input arrives or `deadline` passes (a host may wake earlier, to check
    /// for a shutdown), and appends what arrived, in order, to `events`.
    fn receive(
        &mut self,
        deadline: Instant,
        events: &mut Vec<<Self::Machine as Machine>::Event>,
    ) -> Result<(), Self::Error>;
}

/// The machine handles `event`; its commands are carried out, those that failed handed
/// back at once, until nothing is left to do.
pub fn deliver<H: Host>(
    host: &mut H,
    event: <H::Machine as Machine>::Event,
) -> Result<Progress, H::Error> {
    deliver_with(host, event, &mut Buffers::default())
}

/// The vectors a delivery fills, kept from one to the next so a busy loop does not
/// allocate for every message.
pub struct Buffers<M: Machine> {
    out: Vec<M::Command>,
    failed: Vec<M::Event>,
}

impl<M: Machine> Default for Buffers<M> {
    fn default() -> Self {
        Buffers {
            out: Vec::new(),
            failed: Vec::new(),
        }
    }
}

/// [`deliver`], with vectors kept by the caller.
pub fn deliver_with<H: Host>(
    host: &mut H,
    event: <H::Machine as Machine>::Event,
    buffers: &mut Buffers<H::Machine>,
) -> Result<Progress, H::Error> {
    let Buffers { out, failed } = buffers;
    let mut progress = Progress::Going;
    host.record(&event);
    let now = host.now();
    host.machine().handle(now, event, out);
    loop {
        let carried = host.carry_out(out, failed);
        out.clear();
        match carried {
            Ok(p) => progress = progress.and(p),
            Err(e) => {
                failed.clear();
                return Err(e);
            }
        }
        if failed.is_empty() {
            return Ok(progress);
        }
        let now = host.now();
        for event in failed.drain(..) {
            host.record(&event);
            host.machine().handle(now, event, out);
        }
    }
}

/// One round: each event delivered in turn, then a tick. Over when any delivery was.
pub fn round<H: Host>(
    host: &mut H,
    events: impl IntoIterator<Item = <H::Machine as Machine>::Event>,
) -> Result<Progress, H::Error> {
    round_with(host, events, &mut Buffers::default())
}

/// [`round`], with vectors kept by the caller.
pub fn round_with<H: Host>(
    host: &mut H,
    events: impl IntoIterator<Item = <H::Machine as Machine>::Event>,
    buffers: &mut Buffers<H::Machine>,
) -> Result<Progress, H::Error> {
    let mut progress = Progress::Going;
    for event in events {
        progress = progress.and(deliver_with(host, event, buffers)?);
    }
    Ok(progress.and(deliver_with(host, H::Machine::tick(), buffers)?))
}

/// Runs a machine until its work is over: a round, then a wait for input until its next
/// deadline, then a round of what arrived, and so on. Input received is always handled (a
/// shutdown is looked for before a wait, not after it; a wait that fails hands what it
/// read before the failure to the machine, then returns the failure), and a round that
/// ends the work is finished (every event of it handled, the tick too) before the run
/// returns.
pub fn run<T: Transport>(transport: &mut T) -> Result<(), T::Error> {
    let mut events = Vec::new();
    let mut buffers = Buffers::default();
    loop {
        let progress = round_with(transport, events.drain(..), &mut buffers)?;
        transport.after_round()?;
        if progress == Progress::Over {
            return Ok(());
        }
        transport.check()?;
        let deadline = transport.machine().next_deadline();
        if let Err(e) = transport.receive(deadline, &mut events) {
            // What arrived before the failure is handled first, as if read one by one
            // (a sink records the results it read).
            for event in events.drain(..) {
                deliver_with(transport, event, &mut buffers)?;
            }
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// A toy machine: counts messages, asks for each to be echoed, and ends at `stop_at`.
    /// An echo that fails is answered with a retry; every second a tick says "beat".
    struct Echo {
        heard: Vec<String>,
        next_beat: Instant,
        stop_at: usize,
    }

    #[derive(Debug, Clone, PartialEq)]
    enum In {
        Message(String),
        Failed(String),
        Tick,
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Out {
        Echo(String),
        Beat,
        Done,
    }

    impl Machine for Echo {
        type Event = In;
        type Command = Out;
        fn tick() -> In {
            In::Tick
        }
        fn handle(&mut self, now: Instant, event: In, out: &mut Vec<Out>) {
            match event {
                In::Message(m) => {
                    self.heard.push(m.clone());
                    out.push(Out::Echo(m));
                    if self.heard.len() == self.stop_at {
                        out.push(Out::Done);
                    }
                }
                In::Failed(m) => out.push(Out::Echo(format!("{m} again"))),
                In::Tick if now >= self.next_beat => {
                    self.next_beat = now + Duration::from_secs(1);
                    out.push(Out::Beat);
                }
                In::Tick => {}
            }
        }
        fn next_deadline(&self) -> Instant {
            self.next_beat
        }
    }

    /// An in-memory transport on a fake clock: input arrives at set times, a send fails
    /// once for every message named in `fail_once`.
    struct Memory {
        machine: Echo,
        base: Instant,
        t: Duration,
        arrivals: VecDeque<(Duration, String)>,
        fail_once: Vec<String>,
        sent: Vec<(Duration, Out)>,
        /// A shutdown asked for once this much time has passed.
        shutdown_at: Option<Duration>,
        /// The socket fails right after the next arrivals are read.
        fail_after_reading: bool,
        carry_outs: usize,
        waits: Vec<Duration>,
        recorded: Vec<In>,
    }

    impl Memory {
        fn new(arrivals: &[(u64, &str)], fail_once: &[&str], stop_at: usize) -> Memory {
            let base = Instant::now();
            Memory {
                machine: Echo {
                    heard: Vec::new(),
                    next_beat: base,
                    stop_at,
                },
                base,
                t: Duration::ZERO,
                arrivals: arrivals
                    .iter()
                    .map(|&(ms, m)| (Duration::from_millis(ms), m.to_string()))
                    .collect(),
                fail_once: fail_once.iter().map(|m| m.to_string()).collect(),
                sent: Vec::new(),
                shutdown_at: None,
                fail_after_reading: false,
                carry_outs: 0,
                waits: Vec::new(),
                recorded: Vec::new(),
            }
        }
    }

    impl Host for Memory {
        type Machine = Echo;
        type Error = String;
        fn machine(&mut self) -> &mut Echo {
            &mut self.machine
        }
        fn now(&self) -> Instant {
            self.base + self.t
        }
        fn carry_out(
            &mut self,
            commands: &mut Vec<Out>,
            failed: &mut Vec<In>,
        ) -> Result<Progress, String> {
            self.carry_outs += 1;
            let mut progress = Progress::Going;
            for command in commands.drain(..) {
                match command {
                    Out::Echo(m) if self.fail_once.contains(&m) => {
                        self.fail_once.retain(|f| *f != m);
                        failed.push(In::Failed(m));
                    }
                    Out::Done => progress = Progress::Over,
                    command => self.sent.push((self.t, command)),
                }
            }
            Ok(progress)
        }
        fn record(&mut self, event: &In) {
            self.recorded.push(event.clone());
        }
    }

    impl Transport for Memory {
        fn check(&mut self) -> Result<(), String> {
            match self.shutdown_at {
                Some(at) if self.t >= at => Err("shut down".into()),
                _ => Ok(()),
            }
        }

        fn receive(&mut self, deadline: Instant, events: &mut Vec<In>) -> Result<(), String> {
            let deadline = deadline.saturating_duration_since(self.base);
            self.waits.push(deadline);
            // Everything that arrived by the deadline, or the next arrival if none did.
            match self.arrivals.front() {
                Some(&(at, _)) if at > deadline => self.t = deadline,
                Some(&(at, _)) => {
                    self.t = self.t.max(at);
                    while let Some((_, m)) =
                        self.arrivals.front().filter(|(a, _)| *a <= self.t).cloned()
                    {
                        self.arrivals.pop_front();
                        events.push(In::Message(m));
                    }
                    if self.fail_after_reading {
                        return Err("the socket failed".into());
                    }
                }
                None if deadline > Duration::from_secs(60) => {
                    return Err("nothing more will arrive".into())
                }
                None => self.t = deadline,
            }
            Ok(())
        }
    }

    #[test]
    fn a_failed_command_is_answered_before_the_next_event() {
        let mut m = Memory::new(&[(0, "a"), (0, "b")], &["a"], 2);
        // Both arrive in one round.
        m.t = Duration::ZERO;
        let progress = round(&mut m, [In::Message("a".into()), In::Message("b".into())]);
        assert_eq!(progress, Ok(Progress::Over));
        let sent: Vec<Out> = m.sent.iter().map(|(_, o)| o.clone()).collect();
        assert_eq!(
            sent,
            [
                Out::Echo("a again".into()),
                Out::Echo("b".into()),
                Out::Beat
            ]
        );
        // The retry is recorded between the failed echo's event and the next message.
        assert_eq!(
            m.recorded,
            [
                In::Message("a".into()),
                In::Failed("a".into()),
                In::Message("b".into()),
                In::Tick
            ]
        );
    }

    #[test]
    fn the_host_is_called_after_every_event_even_without_commands() {
        let mut m = Memory::new(&[], &[], 10);
        m.machine.next_beat = m.base + Duration::from_secs(5);
        // A tick before the beat is due says nothing, and still reaches the host.
        assert_eq!(deliver(&mut m, In::Tick), Ok(Progress::Going));
        assert_eq!(m.carry_outs, 1);
        assert!(m.sent.is_empty());
    }

    #[test]
    fn a_run_waits_until_the_machines_deadline_and_finishes_the_round_that_ends_it() {
        let mut m = Memory::new(&[(2500, "x"), (2500, "y"), (2500, "z")], &[], 2);
        assert_eq!(run(&mut m), Ok(()));
        // Beats at 0, 1 and 2 s (each wait ends at the next beat), then the messages at
        // 2.5 s: the second ends the work, the third and the round's tick are still handled.
        assert_eq!(
            m.waits,
            [1000, 2000, 3000].map(Duration::from_millis).to_vec()
        );
        assert_eq!(m.machine.heard, ["x", "y", "z"]);
        let at: Vec<(u64, Out)> = m
            .sent
            .iter()
            .map(|(t, o)| (t.as_millis() as u64, o.clone()))
            .collect();
        assert_eq!(
            at,
            [
                (0, Out::Beat),
                (1000, Out::Beat),
                (2000, Out::Beat),
                (2500, Out::Echo("x".into())),
                (2500, Out::Echo("y".into())),
                (2500, Out::Echo("z".into())),
            ]
        );
        assert_eq!(m.recorded.last(), Some(&In::Tick));
    }

    #[test]
    fn input_received_is_handled_before_a_shutdown_ends_the_run() {
        // The shutdown comes while the messages arrive: both are still handled.
        let mut m = Memory::new(&[(500, "x"), (500, "y")], &[], 10);
        m.shutdown_at = Some(Duration::from_millis(500));
        assert_eq!(run(&mut m), Err("shut down".to_string()));
        assert_eq!(m.machine.heard, ["x", "y"]);
        assert_eq!(m.waits.len(), 1, "no wait after the shutdown");
    }

    #[test]
    fn what_was_read_before_a_socket_failed_is_handled_before_the_run_ends() {
        let mut m = Memory::new(&[(10, "x"), (10, "y")], &[], 10);
        m.machine.next_beat = m.base + Duration::from_secs(3600);
        m.fail_after_reading = true;
        assert_eq!(run(&mut m), Err("the socket failed".to_string()));
        assert_eq!(m.machine.heard, ["x", "y"]);
    }

    #[test]
    fn a_transport_error_ends_the_run() {
        let mut m = Memory::new(&[(10, "x")], &[], 5);
        m.machine.next_beat = m.base + Duration::from_secs(3600);
        assert_eq!(run(&mut m), Err("nothing more will arrive".to_string()));
        assert_eq!(m.machine.heard, ["x"]);
    }
}
