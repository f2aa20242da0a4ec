//! Conditions as the controllers' cache entries keep them, and a GeneratedNode's status.
//!
//! A GeneratedNode's three conditions were half of its cache entry (0.5 KB of 2 KB, measured):
//! a `Condition` is 120 bytes before its type, reason and message, each an allocation of its
//! own. Types and reasons come from a small vocabulary, so the entries share one copy of each
//! word; the message is boxed to its length.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Condition, ConditionStatus, GeneratedNodeStatus};

/// The shared copy of `s`. Past `MAX_WORDS` (statuses written by someone else can carry any
/// reason) words are no longer shared, so the set stays bounded.
fn word(s: &str) -> Arc<str> {
    const MAX_WORDS: usize = 1024;
    static WORDS: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let mut words = WORDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(w) = words.get(s) {
        return w.clone();
    }
    let w: Arc<str> = Arc::from(s);
    if words.len() < MAX_WORDS {
        words.insert(w.clone());
    }
    w
}

/// A cached condition: a [`Condition`] with shared words.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedCondition {
    pub type_: Arc<str>,
    pub status: ConditionStatus,
    pub reason: Arc<str>,
    pub message: Box<str>,
    pub observed_generation: Option<i64>,
    pub last_transition_time: Option<Time>,
}

impl From<Condition> for CachedCondition {
    fn from(c: Condition) -> Self {
        CachedCondition {
            type_: word(&c.type_),
            status: c.status,
            reason: word(&c.reason),
            message: c.message.into_boxed_str(),
            observed_generation: c.observed_generation,
            last_transition_time: c.last_transition_time,
        }
    }
}

impl CachedCondition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    /// The condition as the API has it.
    pub fn to_condition(&self) -> Condition {
        Condition {
            type_: self.type_.to_string(),
            status: self.status,
            reason: self.reason.to_string(),
            message: self.message.to_string(),
            observed_generation: self.observed_generation,
            last_transition_time: self.last_transition_time.clone(),
        }
    }
}

/// A cached [`GeneratedNodeStatus`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedStatus {
    pub observed_generation: Option<i64>,
    pub conditions: Box<[CachedCondition]>,
    pub ready_replicas: Option<i32>,
}

impl From<GeneratedNodeStatus> for CachedStatus {
    fn from(status: GeneratedNodeStatus) -> Self {
        CachedStatus {
            observed_generation: status.observed_generation,
            conditions: status.conditions.into_iter().map(Into::into).collect(),
            ready_replicas: status.ready_replicas,
        }
    }
}

impl CachedStatus {
    /// The status as the API has it.
    pub fn to_status(&self) -> GeneratedNodeStatus {
        GeneratedNodeStatus {
            observed_generation: self.observed_generation,
            conditions: self
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect(),
            ready_replicas: self.ready_replicas,
        }
    }

    /// The condition of this type.
    pub fn condition(&self, type_: &str) -> Option<&CachedCondition> {
        self.conditions.iter().find(|c| &*c.type_ == type_)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_comes_back_as_it_went_in_with_its_words_shared() {
        let ready = |message: &str| {
            let mut c = Condition::new("Ready", ConditionStatus::False, "RollingOut", message);
            c.observed_generation = Some(2);
            c.last_transition_time = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
            c
        };
        let status = GeneratedNodeStatus {
            observed_generation: Some(2),
            conditions: vec![ready("0/1 replicas available")],
            ready_replicas: Some(0),
        };
        let cached = CachedStatus::from(status.clone());
        assert_eq!(cached.to_status(), status);
        assert_eq!(
            &*cached.condition("Ready").unwrap().message,
            "0/1 replicas available"
        );
        assert!(cached.condition("Available").is_none());
        let other = CachedStatus::from(GeneratedNodeStatus {
            conditions: vec![ready("1/2 replicas available")],
            ..Default::default()
        });
        assert!(Arc::ptr_eq(
            &cached.conditions[0].reason,
            &other.conditions[0].reason
        ));
    }
}
