//! Circuit breaker: after `threshold` consecutive failures the service is presumed absent and
//! requests fail at once (costing nothing) until `recovery` has passed; then one probe is let
//! through (half-open) and its outcome closes or re-opens the circuit.

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

    pub fn on_failure(&mut self, permit: Permit, now: Instant) {
        if permit.probe {
            self.probe_in_flight = false;
            self.opened_at = Some(now);
            return;
        }
        if self.opened_at.is_none() {
            self.failures += 1;
            if self.failures >= self.threshold {
                self.opened_at = Some(now);
            }
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
            let p = b.try_acquire(t0).unwrap();
            b.on_failure(p, t0);
        }
        assert_eq!(b.state(t0), State::Open);
        assert!(b.try_acquire(t0 + Duration::from_secs(5)).is_none());
        let later = t0 + Duration::from_secs(11);
        let probe = b.try_acquire(later).unwrap();
        assert!(probe.probe);
        assert!(b.try_acquire(later).is_none(), "only one probe at a time");
        b.on_failure(probe, later);
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
        b.on_failure(p, t0);
        let p = b.try_acquire(t0).unwrap();
        b.on_success(p);
        let p = b.try_acquire(t0).unwrap();
        b.on_failure(p, t0);
        assert_eq!(b.state(t0), State::Closed);
    }
}
