//! Recognise a cached object older than our own last status write.
//!
//! A reconcile triggered by a child's watch event can run before the watch has delivered the
//! status the previous reconcile wrote; working from that stale copy would redo the work and
//! write the same status again. We remember the resourceVersion each status write returned and
//! skip objects older than it: the watch is about to deliver the newer one, which triggers the
//! next reconcile anyway.
//!
//! resourceVersions are opaque by contract, but an etcd-backed API server issues increasing
//! integers; anything that does not parse as one is treated as fresh (the reconcile just runs).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Freshness {
    written: Mutex<HashMap<String, u64>>,
}

impl Freshness {
    /// Remember the resourceVersion our status write on `uid` returned.
    pub fn wrote(&self, uid: Option<&str>, resource_version: Option<&str>) {
        let (Some(uid), Some(rv)) = (uid, resource_version.and_then(|v| v.parse().ok())) else {
            return;
        };
        if let Ok(mut m) = self.written.lock() {
            m.insert(uid.to_string(), rv);
        }
    }

    /// Whether this copy of the object predates our last status write (and can be skipped).
    /// A copy that caught up clears the memory.
    pub fn is_stale(&self, uid: Option<&str>, resource_version: Option<&str>) -> bool {
        let (Some(uid), Some(rv)) = (uid, resource_version.and_then(|v| v.parse::<u64>().ok()))
        else {
            return false;
        };
        let Ok(mut m) = self.written.lock() else {
            return false;
        };
        match m.get(uid) {
            Some(&written) if rv < written => true,
            Some(_) => {
                m.remove(uid);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_copies_are_stale_until_one_catches_up() {
        let f = Freshness::default();
        assert!(!f.is_stale(Some("u"), Some("10")));
        f.wrote(Some("u"), Some("12"));
        assert!(f.is_stale(Some("u"), Some("11")));
        assert!(!f.is_stale(Some("other"), Some("11")));
        assert!(!f.is_stale(Some("u"), Some("12")));
        // Caught up: forgotten, so a later older copy (a re-created object) is not skipped.
        assert!(!f.is_stale(Some("u"), Some("5")));
        f.wrote(Some("u"), Some("not-a-number"));
        assert!(!f.is_stale(Some("u"), Some("1")));
    }
}
