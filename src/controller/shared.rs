//! Values that many cache entries repeat (a condition's text, a domain, a version), kept once.
//!
//! The sets hold their values weakly: a value lives as long as an entry holds it, and the set
//! forgets it at its next sweep. So a value that names its object ("waiting for x to be
//! Ready") comes and goes with that object, and the set never fills up. The sets before kept
//! their values and stopped sharing past 1,024 or 4,096 of them; at 20,000 generations such
//! messages filled them while the generations were made, and every text first seen later (a
//! Deployment's "0/1 replicas available") was a copy of its own in each node's entry: 11,000
//! more unshared condition texts in 13 minutes of a core of the running operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use super::children::{Digest, digest};

/// Size of a set below which it is never swept.
const MIN_SWEEP: usize = 1024;

/// A set of shared values of type `T`, found by a [`Digest`] of what they are made of.
pub struct Shared<T: ?Sized> {
    table: OnceLock<Mutex<Table<T>>>,
}

struct Table<T: ?Sized> {
    values: HashMap<Digest, Weak<T>>,
    /// The size at which the dropped values are swept out: a quarter more than was live at the
    /// last sweep. A dropped value keeps its allocation until then (its `Weak` does), so the
    /// set never holds more than 1.25 times what was live at its last sweep, and sweeping
    /// costs about five checks per insert.
    sweep_at: usize,
}

impl<T: ?Sized> Default for Table<T> {
    fn default() -> Self {
        Table {
            values: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<T: ?Sized> Shared<T> {
    pub const fn new() -> Self {
        Shared {
            table: OnceLock::new(),
        }
    }

    /// The shared value under `key` if it `matches`, else a new one from `make` (shared from
    /// then on, unless another live value has the same digest).
    pub fn get(
        &self,
        key: Digest,
        matches: impl FnOnce(&T) -> bool,
        make: impl FnOnce() -> Arc<T>,
    ) -> Arc<T> {
        let mut table = self
            .table
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match table.values.get(&key).and_then(Weak::upgrade) {
            Some(v) if matches(&v) => v,
            // A digest collision with a live value: this one is not shared.
            Some(_) => make(),
            None => {
                let v = make();
                if table.values.len() >= table.sweep_at {
                    table.values.retain(|_, w| w.strong_count() > 0);
                    let live = table.values.len();
                    table.sweep_at = (live + live / 4).max(MIN_SWEEP);
                }
                table.values.insert(key, Arc::downgrade(&v));
                v
            }
        }
    }

    /// How many values the set knows of, dropped ones not yet swept included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .get()
            .map_or(0, |t| t.lock().map_or(0, |t| t.values.len()))
    }
}

/// A set of shared strings.
pub struct SharedStrings(Shared<str>);

impl SharedStrings {
    pub const fn new() -> Self {
        SharedStrings(Shared::new())
    }

    /// The shared copy of `s`.
    pub fn get(&self, s: &str) -> Arc<str> {
        self.0.get(digest(s), |v| v == s, || Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let set = SharedStrings::new();
        let a = set.get("1/1 replicas available");
        let b = set.get("1/1 replicas available");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(&*set.get("0/1 replicas available"), &*a);
    }

    /// The regression: thousands of messages that name their objects must not stop later
    /// common ones from being shared.
    #[test]
    fn common_values_are_shared_after_many_unique_ones() {
        let set = SharedStrings::new();
        let held: Vec<_> = (0..10_000)
            .map(|i| set.get(&format!("waiting for node-{i} to be Ready")))
            .collect();
        let a = set.get("the rollout made no progress within its deadline");
        let b = set.get("the rollout made no progress within its deadline");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(held.len(), 10_000);
    }

    #[test]
    fn dropped_values_are_swept() {
        let set = SharedStrings::new();
        for i in 0..100_000 {
            drop(set.get(&format!("waiting for node-{i} to be Ready")));
        }
        assert!(set.0.len() <= MIN_SWEEP, "{} values kept", set.0.len());
        let kept = set.get("kept");
        for i in 0..100_000 {
            drop(set.get(&format!("message {i}")));
        }
        assert!(Arc::ptr_eq(&kept, &set.get("kept")));
    }

    #[test]
    fn a_digest_collision_is_not_shared_and_not_wrong() {
        let set: Shared<str> = Shared::new();
        let key = digest("a");
        let a = set.get(key, |v| v == "a", || Arc::from("a"));
        let b = set.get(key, |v| v == "b", || Arc::from("b"));
        assert_eq!((&*a, &*b), ("a", "b"));
        assert!(Arc::ptr_eq(
            &a,
            &set.get(key, |v| v == "a", || Arc::from("a"))
        ));
    }
}
