//! The heartbeat thread, and the state it shares with the poll thread.
//!
//! The thread sends Heartbeat every `heartbeat_interval_ms` with the
//! member's current id and generation, read from [`Shared`]. It never acts
//! on an answer itself: a rebalance or a fencing becomes a [`Signal`] that
//! the poll thread picks up (it must commit, call the rebalance listener
//! and rejoin, all of which belong to the application's thread).
//!
//! No heartbeat goes out while a JoinGroup is in flight: the broker keeps a
//! member that waits in a join alive, and a heartbeat then would only be
//! answered `RebalanceInProgress`. The join's answer arrives on the
//! connection's I/O thread, which restarts heartbeats right away, so a
//! member whose application is slow to poll again keeps its session.
//!
//! The state lock is only ever held for bookkeeping, never across I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringmq_wire::envelope::{HeartbeatRequest, RequestBody, ResponseBody};
use ringmq_wire::error::ErrorCode;

use super::coordinator::Coordinator;
use crate::connection::ReplyResult;
use crate::error::ClientError;

/// How often a thread blocked on the network checks for shutdown.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What the broker told the member about its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The group is rebalancing: commit, give everything up, rejoin.
    Rebalance,
    /// The member's generation is over (`IllegalGeneration`) or the member
    /// is gone (`UnknownMemberId`): it owns nothing any more and cannot
    /// commit; it must rejoin.
    Fenced(ErrorCode),
}

impl Signal {
    /// The signal an error carries, if it is one of the group's.
    pub(crate) fn of(error: &ClientError) -> Option<Signal> {
        match error.code()? {
            ErrorCode::RebalanceInProgress => Some(Signal::Rebalance),
            code @ (ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId) => {
                Some(Signal::Fenced(code))
            }
            // The coordinator has no such group (e.g. it lost the group in
            // a crash): it certainly does not know the member either.
            ErrorCode::GroupNotFound => Some(Signal::Fenced(ErrorCode::UnknownMemberId)),
            _ => None,
        }
    }

    /// Fencing outranks a rebalance: a fenced member cannot commit.
    fn outranks(self, other: Signal) -> bool {
        matches!((self, other), (Signal::Fenced(_), Signal::Rebalance))
    }
}

struct State {
    /// "" until the first join completes.
    member_id: String,
    generation: i32,
    /// Heartbeats go out only while set: a stable, unfenced member.
    heartbeating: bool,
    interval: Duration,
    next_due: Instant,
    /// Raised for the current generation; taken by the poll thread.
    signal: Option<Signal>,
    /// The answer to the JoinGroup in flight, once it arrived.
    join_answer: Option<ReplyResult>,
}

/// State shared by the poll thread, the heartbeat thread and the I/O
/// thread that completes joins.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled on every change a waiter may care about.
    changed: Condvar,
    stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            state: Mutex::new(State {
                member_id: String::new(),
                generation: -1,
                heartbeating: false,
                interval: Duration::from_secs(3),
                next_due: Instant::now(),
                signal: None,
                join_answer: None,
            }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    pub(crate) fn member_id(&self) -> String {
        self.lock().member_id.clone()
    }

    pub(crate) fn generation(&self) -> i32 {
        self.lock().generation
    }

    /// A JoinGroup is about to go out: heartbeats pause until it completes.
    pub(crate) fn begin_join(&self) {
        self.update(|state| {
            state.heartbeating = false;
            state.join_answer = None;
        });
    }

    /// Takes the answer of the join in flight (on the connection's I/O
    /// thread). A successful join makes its member id and generation
    /// current, clears signals of the generation before, and restarts
    /// heartbeats.
    pub(crate) fn deliver_join(&self, answer: ReplyResult) {
        self.update(|state| {
            if let Ok((response, _)) = &answer {
                if let ResponseBody::JoinGroup(joined) = &response.body {
                    state.member_id = joined.member_id.clone();
                    state.generation = joined.generation;
                    state.interval =
                        Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1)));
                    state.next_due = Instant::now() + state.interval;
                    state.heartbeating = true;
                    state.signal = None;
                }
            }
            state.join_answer = Some(answer);
        });
    }

    /// Waits until the join's answer arrives or `deadline` passes.
    pub(crate) fn wait_join_answer(&self, deadline: Instant) -> Option<ReplyResult> {
        let mut state = self.lock();
        loop {
            if let Some(answer) = state.join_answer.take() {
                return Some(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Raises `signal` for `member_id` in `generation`; ignored when that
    /// is no longer the current membership (the answer is stale). Fencing
    /// stops heartbeats: they could only be refused.
    pub(crate) fn raise(&self, member_id: &str, generation: i32, signal: Signal) {
        self.update(|state| {
            if state.member_id != member_id || state.generation != generation {
                return;
            }
            let replace = match state.signal {
                None => true,
                Some(current) => signal.outranks(current),
            };
            if replace {
                state.signal = Some(signal);
            }
            if matches!(signal, Signal::Fenced(_)) {
                state.heartbeating = false;
            }
        });
    }

    pub(crate) fn take_signal(&self) -> Option<Signal> {
        self.lock().signal.take()
    }

    /// Waits until a signal is pending or `deadline` passes.
    pub(crate) fn wait_signal(&self, deadline: Instant) {
        let mut state = self.lock();
        while state.signal.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The broker no longer knows the member: the next join starts afresh.
    pub(crate) fn forget_member(&self) {
        self.update(|state| {
            state.member_id.clear();
            state.heartbeating = false;
            state.signal = None;
        });
    }

    /// Stops heartbeats for good (the consumer is closing).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.update(|state| state.heartbeating = false);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until a heartbeat is due, returning the membership to send
    /// it for; `None` once stopping.
    fn next_heartbeat(&self) -> Option<(String, i32)> {
        let mut state = self.lock();
        loop {
            if self.stopping() {
                return None;
            }
            let now = Instant::now();
            if state.heartbeating && now >= state.next_due {
                state.next_due = now + state.interval;
                return Some((state.member_id.clone(), state.generation));
            }
            state = if state.heartbeating {
                let wait = state.next_due - now;
                self.changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            } else {
                self.changed.wait(state).unwrap_or_else(|e| e.into_inner())
            };
        }
    }
}

/// Starts the heartbeat thread of `group`.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    coordinator: Arc<Coordinator>,
    group: String,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringmq-hb-{group}"))
        .spawn(move || run(&shared, &coordinator, &group))
}

fn run(shared: &Shared, coordinator: &Coordinator, group: &str) {
    while let Some((member_id, generation)) = shared.next_heartbeat() {
        let body = RequestBody::Heartbeat(HeartbeatRequest {
            group: group.to_string(),
            member_id: member_id.clone(),
            generation,
        });
        let Some(outcome) = send(shared, coordinator, body) else {
            return; // stopping
        };
        let Err(error) = outcome else {
            continue;
        };
        match Signal::of(&error) {
            Some(signal) => {
                tracing::debug!(group, member_id, generation, ?signal, "heartbeat refused");
                shared.raise(&member_id, generation, signal);
            }
            None => {
                // Transient (broker restarting, coordinator moved): the next
                // heartbeat retries; the session timeout bounds the outage.
                tracing::debug!(group, member_id, error = %error, "heartbeat failed");
                coordinator.note_error(&error);
            }
        }
    }
}

/// Sends one heartbeat and waits for its answer, checking for shutdown
/// meanwhile; `None` when stopping.
fn send(
    shared: &Shared,
    coordinator: &Coordinator,
    body: RequestBody,
) -> Option<Result<(), ClientError>> {
    let future = match coordinator.request(body) {
        Ok(future) => future,
        Err(e) => return Some(Err(e)),
    };
    loop {
        if shared.stopping() {
            return None;
        }
        match future.wait_timeout(STOP_CHECK) {
            Ok(None) => continue,
            Ok(Some(_)) => return Some(Ok(())),
            Err(e) => return Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmq_wire::envelope::{ApiKey, JoinGroupResponse, Response};
    use ringmq_wire::group_api::{Assignor, GroupMode};

    fn joined(member_id: &str, generation: i32) -> ReplyResult {
        let body = ResponseBody::JoinGroup(JoinGroupResponse {
            member_id: member_id.into(),
            generation,
            mode: GroupMode::Clustering,
            assignor: Assignor::Sticky,
            assignment: vec![],
            heartbeat_interval_ms: 50,
            session_timeout_ms: 150,
            member_count: 1,
            ..Default::default()
        });
        Ok((
            Response::ok(ApiKey::JoinGroup, 1, body),
            bytes::Bytes::new(),
        ))
    }

    #[test]
    fn a_join_answer_makes_the_membership_current_and_restarts_heartbeats() {
        let shared = Shared::new();
        shared.begin_join();
        assert!(!shared.lock().heartbeating);
        shared.deliver_join(joined("m-1", 4));
        assert_eq!(shared.member_id(), "m-1");
        assert_eq!(shared.generation(), 4);
        assert!(shared.lock().heartbeating);
        assert!(shared
            .wait_join_answer(Instant::now())
            .is_some_and(|a| a.is_ok()));
    }

    #[test]
    fn stale_signals_are_ignored_and_fencing_outranks_rebalance() {
        let shared = Shared::new();
        shared.deliver_join(joined("m-1", 4));
        shared.raise("m-1", 3, Signal::Rebalance);
        assert_eq!(shared.take_signal(), None, "older generation");
        shared.raise("m-2", 4, Signal::Rebalance);
        assert_eq!(shared.take_signal(), None, "another member");

        shared.raise("m-1", 4, Signal::Rebalance);
        shared.raise("m-1", 4, Signal::Fenced(ErrorCode::IllegalGeneration));
        shared.raise("m-1", 4, Signal::Rebalance);
        assert_eq!(
            shared.take_signal(),
            Some(Signal::Fenced(ErrorCode::IllegalGeneration))
        );
        assert!(!shared.lock().heartbeating, "a fenced member stops");
        // A new generation drops whatever was pending.
        shared.raise("m-1", 4, Signal::Rebalance);
        shared.deliver_join(joined("m-1", 5));
        assert_eq!(shared.take_signal(), None);
    }

    #[test]
    fn heartbeats_wait_for_their_interval_and_stop_on_request() {
        let shared = Arc::new(Shared::new());
        shared.deliver_join(joined("m-1", 1));
        let started = Instant::now();
        assert_eq!(shared.next_heartbeat(), Some(("m-1".to_string(), 1)));
        assert!(started.elapsed() >= Duration::from_millis(45));
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || shared.next_heartbeat())
        };
        shared.begin_join(); // paused: the waiter must keep waiting
        std::thread::sleep(Duration::from_millis(80));
        shared.stop();
        assert_eq!(waiter.join().unwrap(), None);
    }

    #[test]
    fn group_errors_map_to_signals() {
        let error = |code| ClientError::api(ringmq_wire::error::ApiError::new(code, "x"), "");
        assert_eq!(
            Signal::of(&error(ErrorCode::RebalanceInProgress)),
            Some(Signal::Rebalance)
        );
        assert_eq!(
            Signal::of(&error(ErrorCode::UnknownMemberId)),
            Some(Signal::Fenced(ErrorCode::UnknownMemberId))
        );
        assert_eq!(
            Signal::of(&error(ErrorCode::GroupNotFound)),
            Some(Signal::Fenced(ErrorCode::UnknownMemberId))
        );
        assert_eq!(Signal::of(&error(ErrorCode::NotCoordinator)), None);
        assert_eq!(Signal::of(&ClientError::Closed("x")), None);
    }
}
