//! The codegen state machine as status conditions.
//!
//! Conditions are written deterministically: the same outcome gives the same conditions, and
//! `lastTransitionTime` is kept from the previous status unless the condition's status flipped,
//! so an unchanged object never gets a different status (and the controller never loops).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Condition, ConditionStatus, Phase};

pub const ANALYZED: &str = "Analyzed";
pub const GENERATED: &str = "Generated";
pub const VALIDATED: &str = "Validated";
pub const PUBLISHED: &str = "Published";
pub const DEPLOYED: &str = "Deployed";
pub const READY: &str = "Ready";

/// The stages in order, with the phase shown while each is not yet done.
pub const STAGES: [(&str, Phase); 5] = [
    (ANALYZED, Phase::Analyzing),
    (GENERATED, Phase::Generating),
    (VALIDATED, Phase::Validating),
    (PUBLISHED, Phase::Publishing),
    (DEPLOYED, Phase::Deploying),
];

/// Insert or replace the condition of the same type, keeping its `lastTransitionTime` when the
/// status did not change, and stamping `now` when it did (or when it is new).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: Option<&Time>) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                now.cloned()
            };
            *old = new;
        }
        None => {
            new.last_transition_time = now.cloned();
            conditions.push(new);
        }
    }
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The display phase: `Failed` if a stage failed, the first unfinished stage's phase, else
/// `Completed` (stages that are absent are not required).
pub fn phase(conditions: &[Condition]) -> Phase {
    let mut first_pending = None;
    for (stage, phase) in STAGES {
        match get(conditions, stage).map(|c| c.status) {
            Some(ConditionStatus::False) => return Phase::Failed,
            Some(ConditionStatus::Unknown) if first_pending.is_none() => {
                first_pending = Some(phase)
            }
            _ => {}
        }
    }
    match (first_pending, get(conditions, ANALYZED)) {
        (_, None) => Phase::Pending,
        (Some(p), _) => p,
        (None, _) => Phase::Completed,
    }
}

/// Canonical order of conditions in status, so their list never reorders.
pub fn sort(conditions: &mut [Condition]) {
    let rank = |t: &str| {
        STAGES
            .iter()
            .position(|(s, _)| *s == t)
            .unwrap_or(if t == READY {
                STAGES.len()
            } else {
                STAGES.len() + 1
            })
    };
    conditions.sort_by(|a, b| {
        rank(&a.type_)
            .cmp(&rank(&b.type_))
            .then_with(|| a.type_.cmp(&b.type_))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: &str, s: ConditionStatus) -> Condition {
        Condition::new(t, s, "R", "m")
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let t1 = Time(jiff_now(1));
        let t2 = Time(jiff_now(2));
        let mut conds = Vec::new();
        set_condition(&mut conds, c(READY, ConditionStatus::False), Some(&t1));
        set_condition(&mut conds, c(READY, ConditionStatus::False), Some(&t2));
        assert_eq!(conds[0].last_transition_time, Some(t1.clone()));
        set_condition(&mut conds, c(READY, ConditionStatus::True), Some(&t2));
        assert_eq!(conds[0].last_transition_time, Some(t2));
    }

    fn jiff_now(secs: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn phase_follows_conditions() {
        assert_eq!(phase(&[]), Phase::Pending);
        assert_eq!(
            phase(&[
                c(ANALYZED, ConditionStatus::True),
                c(GENERATED, ConditionStatus::Unknown)
            ]),
            Phase::Generating
        );
        assert_eq!(phase(&[c(ANALYZED, ConditionStatus::False)]), Phase::Failed);
        assert_eq!(
            phase(&[
                c(ANALYZED, ConditionStatus::True),
                c(VALIDATED, ConditionStatus::True)
            ]),
            Phase::Completed
        );
    }
}
