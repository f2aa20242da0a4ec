//! Conditions as the controllers' cache entries keep them, and a GeneratedNode's status.
//!
//! A GeneratedNode's three conditions were half of its cache entry (0.5 KB of 2 KB, measured):
//! a `Condition` is 120 bytes before its type, reason and message, each an allocation of its
//! own. Most conditions repeat whole across objects ("Ready", "True", "Available", "1/1
//! replicas available"), so the entries share one copy of each text; the optional generation
//! and transition time are packed.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::children::digest;
use super::shared::{Shared, SharedStrings};
use crate::api::{Condition, ConditionStatus, GeneratedNodeStatus};

/// The shared copy of a condition's type, reason or message. A message that names its object
/// is still the same for its three conditions ("waiting for x to be Ready").
fn word(s: &str) -> Arc<str> {
    static WORDS: SharedStrings = SharedStrings::new();
    WORDS.get(s)
}

/// What conditions share: type, reason and message. Most conditions repeat across objects
/// whole ("Ready", "Available", "1/1 replicas available"), so an entry keeps one pointer to a
/// shared copy.
#[derive(Debug, PartialEq)]
struct Text {
    type_: Arc<str>,
    reason: Arc<str>,
    message: Arc<str>,
}

/// The shared copy of a condition's text.
fn text(type_: &str, reason: &str, message: &str) -> Arc<Text> {
    static TEXTS: Shared<Text> = Shared::new();
    TEXTS.get(
        digest(&(type_, reason, message)),
        |t| (&*t.type_, &*t.reason, &*t.message) == (type_, reason, message),
        || {
            Arc::new(Text {
                type_: word(type_),
                reason: word(reason),
                message: word(message),
            })
        },
    )
}

/// A cached condition: a [`Condition`] whose text is shared, 32 bytes instead of 96.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedCondition {
    text: Arc<Text>,
    observed_generation: i64,
    transition_seconds: i64,
    transition_nanos: i32,
    pub status: ConditionStatus,
    /// Which of the observed generation and transition time are set.
    has: u8,
}

const HAS_GENERATION: u8 = 1;
const HAS_TRANSITION: u8 = 2;

impl From<Condition> for CachedCondition {
    fn from(c: Condition) -> Self {
        let mut has = 0;
        if c.observed_generation.is_some() {
            has |= HAS_GENERATION;
        }
        let transition = c.last_transition_time.map(|t| t.0);
        if transition.is_some() {
            has |= HAS_TRANSITION;
        }
        CachedCondition {
            text: text(&c.type_, &c.reason, &c.message),
            observed_generation: c.observed_generation.unwrap_or_default(),
            transition_seconds: transition.map(|t| t.as_second()).unwrap_or_default(),
            transition_nanos: transition
                .map(|t| t.subsec_nanosecond())
                .unwrap_or_default(),
            status: c.status,
            has,
        }
    }
}

impl CachedCondition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    pub fn type_(&self) -> &str {
        &self.text.type_
    }

    pub fn reason(&self) -> &str {
        &self.text.reason
    }

    pub fn message(&self) -> &str {
        &self.text.message
    }

    /// The condition as the API has it.
    pub fn to_condition(&self) -> Condition {
        Condition {
            type_: self.type_().to_string(),
            status: self.status,
            reason: self.reason().to_string(),
            message: self.message().to_string(),
            observed_generation: (self.has & HAS_GENERATION != 0)
                .then_some(self.observed_generation),
            // Made from a valid timestamp, so it is one.
            last_transition_time: (self.has & HAS_TRANSITION != 0)
                .then(|| Timestamp::new(self.transition_seconds, self.transition_nanos).ok())
                .flatten()
                .map(Time),
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
        self.conditions.iter().find(|c| c.type_() == type_)
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
            cached.condition("Ready").unwrap().message(),
            "0/1 replicas available"
        );
        assert!(cached.condition("Available").is_none());
        let other = CachedStatus::from(GeneratedNodeStatus {
            conditions: vec![ready("1/2 replicas available")],
            ..Default::default()
        });
        // Another message: a text of its own, the same reason.
        assert!(!Arc::ptr_eq(
            &cached.conditions[0].text,
            &other.conditions[0].text
        ));
        assert!(Arc::ptr_eq(
            &cached.conditions[0].text.reason,
            &other.conditions[0].text.reason
        ));
        let again = CachedStatus::from(status.clone());
        assert!(Arc::ptr_eq(
            &cached.conditions[0].text,
            &again.conditions[0].text
        ));
        assert_eq!(std::mem::size_of::<CachedCondition>(), 32);
    }

    #[test]
    fn the_conditions_of_a_waiting_node_share_its_message() {
        let c = |type_| {
            CachedCondition::from(Condition::new(
                type_,
                ConditionStatus::False,
                "WaitingForDependencies",
                "waiting for a-node to be Ready",
            ))
        };
        let (available, ready) = (c("Available"), c("Ready"));
        assert!(!Arc::ptr_eq(&available.text, &ready.text));
        assert!(Arc::ptr_eq(&available.text.message, &ready.text.message));
    }

    #[test]
    fn a_condition_without_generation_or_time_stays_without() {
        let mut c = Condition::new("Ready", ConditionStatus::True, "Done", "");
        c.last_transition_time = None;
        assert_eq!(CachedCondition::from(c.clone()).to_condition(), c);
        c.last_transition_time = Some(Time(Timestamp::new(1_700_000_000, 5).unwrap()));
        c.observed_generation = Some(0);
        assert_eq!(CachedCondition::from(c.clone()).to_condition(), c);
    }
}
