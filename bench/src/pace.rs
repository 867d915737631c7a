//! Fixed-rate (`--rate`) pacing in bursts.
//!
//! Message `i` of a producer is *intended* to be sent at `start + i ×
//! interval`; its latency is measured from that time, whenever it actually
//! went out, so a stalled producer shows up in the tail instead of silently
//! sending less (no coordinated omission).
//!
//! Waiting for each message's own time meant sleeping to ~60 µs before it
//! and spinning with yields the rest of the way: at 50k msg/s (20 µs apart)
//! that spun a whole core. Instead the producer wakes once per tick (at the
//! next intended time, and at least `tick` after the previous wake-up),
//! sends every message whose intended time has come in one `send_many`, and
//! sleeps again. The latency of each message still counts from its own
//! intended time, so waiting for the tick is part of the measured latency:
//! an honest cost of the generator, kept small by a short tick
//! (`--send-tick-us`, 250 µs) and a 1 ns timer slack on the producing thread
//! (the kernel wakes it on time). A burst also opens its batch later than a
//! steady trickle would, so with `--linger-ms` its messages linger a little
//! longer: at W4 (50k msg/s, linger 1 ms) a 1 ms tick added ~0.9 ms to p50,
//! 250 µs ~0.2 ms, for 1/4 of the CPU of per-message pacing.

use std::ops::Range;

/// The intended send time of message `i`, in ns since the bench epoch.
pub fn intended_ns(start_ns: u64, interval_ns: f64, i: u64) -> u64 {
    start_ns + (i as f64 * interval_ns) as u64
}

/// The first message intended at or after `t_ns`.
pub fn first_at_or_after(start_ns: u64, interval_ns: f64, t_ns: u64) -> u64 {
    if t_ns <= start_ns {
        return 0;
    }
    let mut i = ((t_ns - start_ns) as f64 / interval_ns).ceil() as u64;
    // Float rounding: settle on the exact boundary of `intended_ns`.
    while i > 0 && intended_ns(start_ns, interval_ns, i - 1) >= t_ns {
        i -= 1;
    }
    while intended_ns(start_ns, interval_ns, i) < t_ns {
        i += 1;
    }
    i
}

/// Which messages to send when, for one producer at a fixed rate.
#[derive(Debug, Clone)]
pub struct Pacer {
    start_ns: u64,
    interval_ns: f64,
    tick_ns: u64,
    /// The first message not sent yet.
    next: u64,
}

impl Pacer {
    pub fn new(start_ns: u64, interval_ns: f64, tick_ns: u64) -> Pacer {
        assert!(
            interval_ns > 0.0 && interval_ns.is_finite(),
            "a positive interval"
        );
        Pacer {
            start_ns,
            interval_ns,
            tick_ns,
            next: 0,
        }
    }

    pub fn intended_ns(&self, i: u64) -> u64 {
        intended_ns(self.start_ns, self.interval_ns, i)
    }

    pub fn first_at_or_after(&self, t_ns: u64) -> u64 {
        first_at_or_after(self.start_ns, self.interval_ns, t_ns)
    }

    /// The messages not yet sent whose intended time is at or before
    /// `now_ns` (possibly none). Call [`Self::sent_up_to`] with what was
    /// actually sent.
    pub fn due(&self, now_ns: u64) -> Range<u64> {
        let end = self.first_at_or_after(now_ns.saturating_add(1));
        self.next..end.max(self.next)
    }

    /// Marks messages before `end` as sent.
    pub fn sent_up_to(&mut self, end: u64) {
        assert!(end >= self.next, "messages are sent in order");
        self.next = end;
    }

    /// When to wake next, having woken at `now_ns`: the next message's
    /// intended time, but no sooner than one tick after now.
    pub fn next_wake_ns(&self, now_ns: u64) -> u64 {
        self.intended_ns(self.next)
            .max(now_ns.saturating_add(self.tick_ns))
    }
}

/// The send times of the records of one `send_many` call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SendTimes {
    /// All sent at once at this time (ns since the epoch).
    Same(u64),
    /// Record `k` of the call is message `first + k` of a fixed-rate
    /// producer, intended at `start + (first + k) × interval`.
    Paced {
        start_ns: u64,
        interval_ns: f64,
        first: u64,
    },
}

impl SendTimes {
    /// The (intended) send time of record `k` of the call.
    pub fn of(&self, k: usize) -> u64 {
        match *self {
            SendTimes::Same(t) => t,
            SendTimes::Paced {
                start_ns,
                interval_ns,
                first,
            } => intended_ns(start_ns, interval_ns, first + k as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_or_after_is_exact_at_boundaries() {
        for interval in [20_000.0, 333.333_333, 1e9 / 7.0, 1.0, 0.5] {
            let start = 1_000_000;
            for i in [0u64, 1, 2, 3, 999, 1000, 123_457] {
                let t = intended_ns(start, interval, i);
                let first = first_at_or_after(start, interval, t);
                assert!(intended_ns(start, interval, first) >= t);
                assert!(first == 0 || intended_ns(start, interval, first - 1) < t);
                let after = first_at_or_after(start, interval, t + 1);
                assert!(intended_ns(start, interval, after) > t);
                assert!(intended_ns(start, interval, after - 1) <= t);
            }
        }
        assert_eq!(first_at_or_after(100, 10.0, 0), 0);
    }

    /// A simulated run at 50k msg/s with a fake clock: bursts once per tick,
    /// a 10 ms stall in the middle, acknowledgements 300 µs after sending.
    /// Every message goes out once, in order, never before its intended
    /// time; latencies count from the intended time, so the stall shows in
    /// full in the messages it delayed.
    #[test]
    fn bursts_keep_each_message_latency_from_its_intended_time() {
        let start = 5_000_000u64;
        let interval = 20_000.0; // 50k msg/s
        let tick = 1_000_000u64;
        let overshoot = 50_000u64; // each sleep wakes 50 µs late
        let ack_after = 300_000u64;
        let mut pacer = Pacer::new(start, interval, tick);
        let mut now = start;
        let mut sent = 0u64;
        let mut wakeups = 0u64;
        // (message, latency, sent in the burst right after the stall)
        let mut latencies: Vec<(u64, u64, bool)> = Vec::new();
        let duration = 200_000_000u64; // 200 ms
        while now < start + duration {
            wakeups += 1;
            let due = pacer.due(now);
            assert_eq!(due.start, sent, "nothing skipped, nothing twice");
            let times = SendTimes::Paced {
                start_ns: start,
                interval_ns: interval,
                first: due.start,
            };
            for (k, message) in due.clone().enumerate() {
                let intended = times.of(k);
                assert_eq!(intended, pacer.intended_ns(message));
                assert!(intended <= now, "sent before its time");
                // The bench records ack time − intended time.
                latencies.push((message, now + ack_after - intended, wakeups == 101));
            }
            sent = due.end;
            pacer.sent_up_to(due.end);
            let wake = pacer.next_wake_ns(now);
            assert!(wake >= now + tick);
            now = wake + overshoot;
            if wakeups == 100 {
                now += 10_000_000; // the producer stalls for 10 ms
            }
        }
        let expected = first_at_or_after(start, interval, now);
        assert!(sent <= expected && sent + 60 >= expected);
        assert_eq!(latencies.len() as u64, sent);
        // One wake-up per tick, not one per message.
        assert!(wakeups < 200, "{wakeups} wake-ups");
        assert!(sent > 9_000);
        let max = latencies.iter().map(|l| l.1).max().unwrap();
        assert!(
            max >= 10_000_000 + ack_after,
            "the stall must show in full: max {max} ns"
        );
        // The stalled burst holds the stall's messages, each with its own
        // share of it; everywhere else a message waits at most a tick plus
        // the wake-up overshoot.
        let stalled: Vec<u64> = latencies.iter().filter(|l| l.2).map(|l| l.1).collect();
        assert!(
            stalled.len() >= 500,
            "{} messages in the stall",
            stalled.len()
        );
        assert!(
            stalled.windows(2).all(|w| w[0] > w[1]),
            "older waited longer"
        );
        for (_, latency, _) in latencies.iter().filter(|l| !l.2) {
            assert!(*latency <= tick + overshoot + ack_after + interval as u64);
        }
    }

    #[test]
    fn slow_rates_wake_for_each_message() {
        // 100 msg/s: 10 ms apart, far more than a tick.
        let pacer = Pacer::new(0, 10_000_000.0, 1_000_000);
        assert_eq!(pacer.due(0), 0..1);
        let mut pacer = pacer;
        pacer.sent_up_to(1);
        assert_eq!(pacer.next_wake_ns(50_000), 10_000_000);
        assert_eq!(pacer.due(9_999_999), 1..1);
        assert_eq!(pacer.due(10_000_000), 1..2);
    }
}
