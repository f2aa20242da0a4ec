//! Per-object exponential backoff for failed reconciles, reset when the object reconciles
//! cleanly, so one broken object never slows the others and never hammers the API server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

type Key = ObjectRef<kube::api::DynamicObject>;

pub struct Backoff {
    failures: Mutex<HashMap<Key, u32>>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            failures: Mutex::new(HashMap::new()),
            base,
            max,
        }
    }

    /// Delay before the next attempt after one more failure of `key`: base·2ⁿ, capped.
    pub fn next(&self, key: &Key) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    pub fn reset(&self, key: &Key) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn doubles_per_failure_caps_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let a = ObjectRef::<ConfigMap>::new("a").within("ns").erase();
        let other = ObjectRef::<ConfigMap>::new("b").within("ns").erase();
        let delays: Vec<u64> = (0..6).map(|_| b.next(&a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(b.next(&other).as_secs(), 1);
        b.reset(&a);
        assert_eq!(b.next(&a).as_secs(), 1);
    }
}
