//! One NodeGeneration through the intelligence service (when configured) and the core.
//!
//! Shared by the offline `generate` command and the controller: the intelligence exchange, the
//! fallback to the built-in library, and the service's quality scores happen here, the same way
//! for both.

use tracing::Instrument;

use crate::analysis;
use crate::api::{IntelligenceMode, NodeGenerationSpec, NodeType};
use crate::intelligence::wire::SessionStatus;
use crate::intelligence::{ContractFamily, IntelligenceClient, IntelligenceError, advisor};
use crate::manifest::Rejected;
use crate::pipeline::{self, Outcome};
use crate::prd;
use crate::render::Renderer;

/// Who is being generated: the object's identity and the session id used on the wire.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `metadata.generation` (0 offline), part of the correlation id.
    pub generation: i64,
    /// Session id of the codegen status events (the object's UID in a cluster).
    pub session: String,
}

impl<'a> Identity<'a> {
    /// Offline there is no UID: the session id is derived from the object's identity.
    pub fn offline(namespace: &'a str, name: &'a str) -> Self {
        let session = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("{namespace}/{name}").as_bytes(),
        )
        .to_string();
        Identity {
            namespace,
            name,
            generation: 0,
            session,
        }
    }
}

/// Why a generation that requires the intelligence service cannot start: the operator has no
/// broker to ask. Retrying cannot help; restarting the operator with one (which reconciles
/// everything) or a spec change does.
pub const INTELLIGENCE_NOT_CONFIGURED: &str = "IntelligenceNotConfigured";

/// One generation: ask the intelligence service when one is configured (falling back to the
/// built-in library unless `intelligence.mode: Required`), run the core, and add the service's
/// quality scores.
///
/// The two contract families are asked independently: codegen analysis (optional; the live
/// service does not serve it) refines the plan, and code analysis scores every node whenever a
/// broker is configured, whatever became of the analysis.
pub async fn run(
    renderer: &Renderer,
    identity: &Identity<'_>,
    spec: &NodeGenerationSpec,
    prd_text: &str,
    client: Option<&IntelligenceClient>,
) -> Result<Outcome, Rejected> {
    let Identity {
        namespace,
        name,
        generation,
        ref session,
    } = *identity;
    let id = pipeline::correlation_id(namespace, name, generation, spec);
    let mode = spec.intelligence.mode;
    let client = client.filter(|_| mode != IntelligenceMode::Disabled);
    if client.is_none() && mode == IntelligenceMode::Required {
        return Err(Rejected {
            reason: INTELLIGENCE_NOT_CONFIGURED.into(),
            message: "spec.intelligence.mode is Required but the operator has no Kafka bootstrap \
                servers configured (--kafka-bootstrap-servers, KAFKA_BOOTSTRAP_SERVERS, the chart's \
                kafka.bootstrapServers); set them, or set the mode to Auto"
                .into(),
        });
    }
    let timeout = std::time::Duration::from_secs(spec.intelligence.timeout_seconds.into());
    let mut hints = None;
    let mut fallback = None;
    let asked = std::time::Instant::now();
    if let (Some(c), Ok(parsed)) = (client, prd::parse(prd_text)) {
        c.publish_status(
            session,
            SessionStatus::Processing,
            10.0,
            "analyzing the PRD",
        );
        let builtin = analysis::plan(&parsed, &pipeline::overrides(spec, name), None)
            .ok()
            .and_then(|p| p.nodes.first().map(|n| n.node_type))
            .unwrap_or(NodeType::Effect);
        let advice = advisor::advise(c, session, prd_text, &parsed, builtin, timeout)
            .instrument(tracing::info_span!("analysis", service = true))
            .await;
        match advice {
            Ok(h) => hints = Some(h),
            Err(e)
                if mode == IntelligenceMode::Required
                    && e == IntelligenceError::BrokerUnavailable =>
            {
                return Err(unavailable(c, session, &e.to_string()));
            }
            Err(e) => {
                c.metrics().fell_back(ContractFamily::Codegen);
                fallback = Some(e.to_string());
            }
        }
    }
    let asking = asked.elapsed().as_secs_f64();
    let mut outcome = pipeline::run(renderer, name, spec, prd_text, id, hints.as_ref());
    outcome.stage_seconds.analysis += asking;
    if let Some(why) = &fallback {
        outcome.note_fallback(why);
    }
    let Some(c) = client else {
        return Ok(outcome);
    };
    if outcome.succeeded() {
        let scoring = std::time::Instant::now();
        let scores = futures::future::join_all(outcome.nodes.iter().map(|n| {
            let main = format!("{}/node.py", n.rendered.context.package);
            let path = format!("{}/{main}", n.rendered.dir_name);
            let code = n
                .rendered
                .files
                .get(&main)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            async move { advisor::assess(c, &path, &code).await }
        }))
        .instrument(tracing::info_span!("quality", service = true))
        .await;
        for (node, score) in outcome.nodes.iter_mut().zip(scores) {
            match score {
                Ok(score) => node.report.merge_service(score),
                // Required means the service must have looked at the code: code analysis is
                // the family it serves.
                Err(e) if mode == IntelligenceMode::Required => {
                    let why = format!("code analysis of {} unanswered: {e}", node.name);
                    return Err(unavailable(c, session, &why));
                }
                Err(e) => {
                    c.metrics().fell_back(ContractFamily::CodeAnalysis);
                    tracing::debug!(node = %node.name, error = %e, "no service score");
                }
            }
        }
        outcome.stage_seconds.quality += scoring.elapsed().as_secs_f64();
    }
    let (status, message) = match &outcome.failure {
        None => (
            SessionStatus::Completed,
            format!("{} node(s) generated", outcome.nodes.len()),
        ),
        Some(f) => (SessionStatus::Failed, f.message.clone()),
    };
    c.publish_status(session, status, 100.0, &message);
    Ok(outcome)
}

/// `intelligence.mode: Required` and the service could not be used: the generation waits.
fn unavailable(client: &IntelligenceClient, session: &str, why: &str) -> Rejected {
    client.publish_status(session, SessionStatus::Failed, 100.0, why);
    Rejected {
        reason: "IntelligenceUnavailable".into(),
        message: format!("spec.intelligence.mode is Required: {why}"),
    }
}
