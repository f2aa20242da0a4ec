//! Circuit breaker of one contract family: a timeout, or `threshold` consecutive other
//! failures, presume the family unserved, and requests fail at once (costing nothing) until
//! `recovery` has passed; then one probe is let through (half-open) and its outcome closes or
//! re-opens the circuit. A timeout opens at once because a family the service does not serve
//! answers nothing at all: waiting for five of them would cost five timeouts per window.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    recovery: Duration,
    failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// Why a request failed, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No reply in time: the family is not served (or the service is gone).
    Timeout,
    /// Anything else that got no answer (a refused send, say).
    Error,
}

/// Permission to send one request; `probe` when it is the half-open probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    pub probe: bool,
}

impl Breaker {
    pub fn new(threshold: u32, recovery: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            recovery,
            failures: 0,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self, now: Instant) -> State {
        match self.opened_at {
            None => State::Closed,
            Some(at) if now.duration_since(at) >= self.recovery => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// Ask to send; `None` means fail fast.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Permit> {
        match self.state(now) {
            State::Closed => Some(Permit { probe: false }),
            State::Open => None,
            State::HalfOpen if self.probe_in_flight => None,
            State::HalfOpen => {
                self.probe_in_flight = true;
                Some(Permit { probe: true })
            }
        }
    }

    pub fn on_success(&mut self, permit: Permit) {
        if permit.probe || self.opened_at.is_none() {
            self.failures = 0;
            self.opened_at = None;
            self.probe_in_flight = false;
        }
    }

    pub fn on_failure(&mut self, permit: Permit, failure: Failure, now: Instant) {
        if permit.probe {
            self.probe_in_flight = false;
            self.opened_at = Some(now);
            return;
        }
        if self.opened_at.is_none() {
            self.failures += 1;
            if failure == Failure::Timeout || self.failures >= self.threshold {
                self.opened_at = Some(now);
            }
        }
    }

    /// The request ended without saying anything about the service (the broker was
    /// unreachable, or the caller gave up): a probe may be sent again.
    pub fn release(&mut self, permit: Permit) {
        if permit.probe {
            self.probe_in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_one_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(b.state(t0), State::Closed);
            let p = b.try_acquire(t0).unwrap();
            b.on_failure(p, Failure::Error, t0);
        }
        assert_eq!(b.state(t0), State::Open);
        assert!(b.try_acquire(t0 + Duration::from_secs(5)).is_none());
        let later = t0 + Duration::from_secs(11);
        let probe = b.try_acquire(later).unwrap();
        assert!(probe.probe);
        assert!(b.try_acquire(later).is_none(), "only one probe at a time");
        b.on_failure(probe, Failure::Timeout, later);
        assert_eq!(b.state(later), State::Open);
        let again = later + Duration::from_secs(11);
        let probe = b.try_acquire(again).unwrap();
        b.on_success(probe);
        assert_eq!(b.state(again), State::Closed);
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        let p = b.try_acquire(t0).unwrap();
        b.on_failure(p, Failure::Error, t0);
        let p = b.try_acquire(t0).unwrap();
        b.on_success(p);
        let p = b.try_acquire(t0).unwrap();
        b.on_failure(p, Failure::Error, t0);
        assert_eq!(b.state(t0), State::Closed);
    }

    #[test]
    fn one_timeout_opens_and_a_released_probe_can_be_sent_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(1));
        let p = b.try_acquire(t0).unwrap();
        b.on_failure(p, Failure::Timeout, t0);
        assert_eq!(b.state(t0), State::Open);
        let later = t0 + Duration::from_secs(2);
        let probe = b.try_acquire(later).unwrap();
        b.release(probe);
        assert_eq!(b.state(later), State::HalfOpen);
        assert!(b.try_acquire(later).is_some_and(|p| p.probe));
    }
}
