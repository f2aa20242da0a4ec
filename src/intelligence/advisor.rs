//! What the operator asks the intelligence service, and how the answers become plan hints and
//! service quality scores. Every failure here is a fallback, never an error of the generation
//! (unless the NodeGeneration says `intelligence.mode: Required`).

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::client::{IntelligenceClient, IntelligenceError};
use super::wire::{CodeAnalysisOperation, CodegenOperation, CodegenResponse};
use crate::analysis::IntelligenceHints;
use crate::api::NodeType;
use crate::prd::Prd;
use crate::quality::ServiceScore;

/// Ask for analysis (node types, mixins, domain, operations), mixin recommendations and matching
/// code patterns for the node type the built-in analysis picked, concurrently, and merge them
/// into hints. Only the analysis is required; the others refine it when they come.
pub async fn advise(
    client: &IntelligenceClient,
    session_id: &str,
    prd_text: &str,
    prd: &Prd,
    builtin_type: NodeType,
    timeout: Duration,
) -> Result<IntelligenceHints, IntelligenceError> {
    let mut analyze = Map::new();
    analyze.insert("prd_content".into(), prd_text.into());
    analyze.insert("analysis_type".into(), "full".into());
    // The handler reads `context`, the bridge schema calls it `workspace_context`: send both.
    analyze.insert("workspace_context".into(), json!({}));
    analyze.insert("context".into(), json!({}));
    analyze.insert("min_confidence".into(), json!(0.5));

    let mut mixin = Map::new();
    let requirements: Vec<Value> = prd
        .functional_requirements
        .iter()
        .take(20)
        .map(|r| Value::from(r.as_str()))
        .collect();
    mixin.insert("requirements".into(), Value::Array(requirements));
    mixin.insert("node_type".into(), builtin_type.as_str().into());
    mixin.insert("existing_mixins".into(), json!([]));

    let mut pattern = Map::new();
    let description = format!(
        "{}\n{}",
        prd.title.as_deref().unwrap_or_default(),
        prd.overview
    );
    pattern.insert("node_description".into(), description.into());
    pattern.insert("node_type".into(), builtin_type.as_str().into());
    pattern.insert("limit".into(), json!(5));
    pattern.insert("score_threshold".into(), json!(0.5));

    let (analysis, mixins, patterns) = tokio::join!(
        client.codegen_within(CodegenOperation::Analyze, session_id, analyze, timeout),
        client.codegen_within(CodegenOperation::Mixin, session_id, mixin, timeout),
        client.codegen_within(CodegenOperation::Pattern, session_id, pattern, timeout),
    );
    let analysis = analysis?;
    Ok(hints(
        &analysis,
        mixins.ok().as_ref(),
        patterns.ok().as_ref(),
    ))
}

/// The plan hints in the service's answers: the analysis, and (when they came) the mixin and
/// pattern recommendations. Whatever the service sent, only these fields reach the plan.
pub fn hints(
    analysis: &CodegenResponse,
    mixins: Option<&CodegenResponse>,
    patterns: Option<&CodegenResponse>,
) -> IntelligenceHints {
    let result = analysis.analysis();
    let mut recommended = result.recommended_mixins.clone();
    // Mixin recommendations refine the plan when they come; their absence is not a failure.
    if let Some(m) = mixins {
        recommended.extend(m.mixin_names());
    }
    recommended.sort();
    recommended.dedup();
    IntelligenceHints {
        node_type_hints: result
            .node_type_hints
            .iter()
            .filter_map(|t| NodeType::parse(t))
            .collect(),
        recommended_mixins: recommended,
        domain: result.domain.clone(),
        operations: result.operations.clone(),
        patterns: patterns.map(|p| p.pattern_names()).unwrap_or_default(),
        correlation_id: analysis.correlation_id.clone().unwrap_or_default(),
    }
}

/// The service's quality assessment of a node's main module.
pub async fn assess(
    client: &IntelligenceClient,
    source_path: &str,
    code: &str,
) -> Result<ServiceScore, IntelligenceError> {
    let reply = client
        .code_analysis(source_path, code, CodeAnalysisOperation::QualityAssessment)
        .await?;
    Ok(ServiceScore {
        quality_score: reply.quality_score.unwrap_or(0.0).clamp(0.0, 1.0),
        onex_compliance: reply.onex_compliance.unwrap_or(0.0).clamp(0.0, 1.0),
        correlation_id: reply.correlation_id.unwrap_or_default(),
    })
}
