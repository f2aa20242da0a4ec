//! Wire types of the intelligence service's Kafka contracts (CONTRACTS.md §1).
//!
//! Strict in what we send (exact field names, lowercase operation types, the flat request
//! payload for code analysis, the event object for codegen), liberal in what we accept (bare or
//! enveloped replies, the correlation id at the top or in `payload`, unknown fields ignored).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `schema_version` of every codegen payload.
pub const SCHEMA_VERSION: &str = "1.0";
/// `source_service` of everything the operator sends.
pub const SOURCE_SERVICE: &str = "omninode-operator";

/// Operation types of the code-analysis contract (sent lowercase).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CodeAnalysisOperation {
    QualityAssessment,
    PatternDetection,
    PerformanceAnalysis,
    ComprehensiveAnalysis,
    OnexCompliance,
    PatternExtraction,
    ArchitecturalCompliance,
}

/// The flat code-analysis request (never enveloped: the live service rejects envelopes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CodeAnalysisRequest {
    pub correlation_id: String,
    pub source_path: String,
    pub content: String,
    pub operation_type: CodeAnalysisOperation,
    pub language: String,
    pub options: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// `code-analysis-completed` (every field optional).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CodeAnalysisCompleted {
    pub correlation_id: Option<String>,
    pub result: Option<Value>,
    pub source_path: Option<String>,
    pub quality_score: Option<f64>,
    pub onex_compliance: Option<f64>,
    pub issues_count: Option<i64>,
    pub recommendations_count: Option<i64>,
    pub processing_time_ms: Option<f64>,
    pub operation_type: Option<String>,
    pub complexity_score: Option<f64>,
    pub maintainability_score: Option<f64>,
    pub results_summary: Option<Value>,
    pub cache_hit: Option<bool>,
}

/// `code-analysis-failed`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CodeAnalysisFailed {
    pub correlation_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub operation_type: Option<String>,
    pub source_path: Option<String>,
    pub retry_allowed: Option<bool>,
    pub processing_time_ms: Option<f64>,
    pub error_details: Option<Value>,
    pub suggested_action: Option<String>,
}

impl CodeAnalysisFailed {
    /// Whether the request may be retried: never for `INVALID_REQUEST`, otherwise as the
    /// service says (older services did not say: then only for transient-sounding codes).
    pub fn retryable(&self) -> bool {
        let code = self.error_code.as_deref().unwrap_or("");
        if code.eq_ignore_ascii_case("INVALID_REQUEST") {
            return false;
        }
        self.retry_allowed.unwrap_or(matches!(
            code,
            "TIMEOUT" | "BACKEND_UNAVAILABLE" | "INTERNAL_ERROR"
        ))
    }
}

/// The four codegen operations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum CodegenOperation {
    Analyze,
    Validate,
    Pattern,
    Mixin,
}

impl CodegenOperation {
    pub const ALL: [CodegenOperation; 4] = [
        CodegenOperation::Analyze,
        CodegenOperation::Validate,
        CodegenOperation::Pattern,
        CodegenOperation::Mixin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CodegenOperation::Analyze => "analyze",
            CodegenOperation::Validate => "validate",
            CodegenOperation::Pattern => "pattern",
            CodegenOperation::Mixin => "mixin",
        }
    }
}

/// The event object every codegen request travels in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CodegenEvent {
    pub event_id: String,
    pub event_type: String,
    pub correlation_id: String,
    pub timestamp: String,
    pub source_service: String,
    pub payload: Map<String, Value>,
}

/// Build a codegen request event: the common payload fields plus `fields`.
pub fn codegen_request(
    op: CodegenOperation,
    correlation_id: &str,
    session_id: &str,
    timestamp: &str,
    fields: Map<String, Value>,
) -> CodegenEvent {
    let mut payload = fields;
    payload.insert("correlation_id".into(), correlation_id.into());
    payload.insert("session_id".into(), session_id.into());
    payload.insert("timestamp".into(), timestamp.into());
    payload.insert("schema_version".into(), SCHEMA_VERSION.into());
    CodegenEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: format!("codegen.request.{}", op.as_str()),
        correlation_id: correlation_id.to_string(),
        timestamp: timestamp.to_string(),
        source_service: SOURCE_SERVICE.to_string(),
        payload,
    }
}

/// `analysis_result` fields the operator reads from an analyze response.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct AnalysisResult {
    pub node_type_hints: Vec<String>,
    pub recommended_mixins: Vec<String>,
    pub domain: Option<String>,
    pub operations: Vec<String>,
}

/// A codegen response payload (the union of the four response shapes; all optional).
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct CodegenResponse {
    pub correlation_id: Option<String>,
    pub analysis_result: Option<Value>,
    pub confidence: Option<f64>,
    pub validation_result: Option<Value>,
    pub quality_score: Option<f64>,
    pub onex_compliance_score: Option<f64>,
    pub is_valid: Option<bool>,
    pub pattern_result: Option<Vec<Value>>,
    pub total_matches: Option<i64>,
    pub mixin_recommendations: Option<Vec<Value>>,
    pub total_recommendations: Option<i64>,
    pub processing_time_ms: Option<f64>,
    pub details: Option<Value>,
}

impl CodegenResponse {
    /// The handler's error code, when the service reports one (`details.error_code`).
    pub fn error_code(&self) -> Option<String> {
        self.details
            .as_ref()?
            .get("error_code")?
            .as_str()
            .map(str::to_string)
    }

    pub fn analysis(&self) -> AnalysisResult {
        self.analysis_result
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Pattern names from `pattern_result` (objects with `pattern_name`/`name`, or strings).
    pub fn pattern_names(&self) -> Vec<String> {
        names(self.pattern_result.iter().flatten(), "pattern_name")
    }

    /// Mixin names from `mixin_recommendations` (objects with `mixin_name`/`name`, or strings).
    pub fn mixin_names(&self) -> Vec<String> {
        names(self.mixin_recommendations.iter().flatten(), "mixin_name")
    }
}

/// Names out of a list of strings or objects carrying `field` (or `name`).
fn names<'a>(values: impl Iterator<Item = &'a Value>, field: &str) -> Vec<String> {
    values
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o
                .get(field)
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        })
        .collect()
}

/// Session status event on `omninode.codegen.status.v1`, keyed by `session_id`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatusEvent {
    pub session_id: String,
    pub status: SessionStatus,
    pub progress_percentage: f64,
    pub message: String,
    pub metadata: Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

/// A dead letter: a reply the operator could not decode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub original_topic: String,
    pub original_offset: i64,
    pub original_value: String,
    pub error: String,
    pub error_type: String,
}

/// A decoded reply body and the correlation ids it can be matched by.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedReply {
    /// The body's `correlation_id` (inside `payload` for envelopes, or the envelope's).
    pub body_correlation_id: Option<String>,
    /// The body: the bare payload, or an envelope's `payload`.
    pub body: Value,
}

/// Why a reply could not be decoded (it goes to the dead-letter topic).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("reply has no value")]
    Empty,
    #[error("reply is not JSON: {0}")]
    NotJson(String),
    #[error("reply is not a JSON object")]
    NotAnObject,
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "EmptyValue",
            DecodeError::NotJson(_) => "InvalidJson",
            DecodeError::NotAnObject => "NotAnObject",
        }
    }
}

/// Decode a reply value, bare or enveloped.
pub fn decode_reply(value: Option<&[u8]>) -> Result<DecodedReply, DecodeError> {
    let bytes = value.ok_or(DecodeError::Empty)?;
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(DecodeError::NotAnObject);
    };
    let enveloped = obj.get("payload").is_some_and(Value::is_object)
        && (obj.contains_key("event_type") || obj.contains_key("event_id"));
    let top_cid = obj
        .get("correlation_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    if enveloped {
        let body = obj.get("payload").cloned().unwrap_or(Value::Null);
        let cid = body
            .get("correlation_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(top_cid);
        Ok(DecodedReply {
            body_correlation_id: cid,
            body,
        })
    } else {
        Ok(DecodedReply {
            body_correlation_id: top_cid,
            body: Value::Object(obj),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn code_analysis_request_is_flat_and_lowercase() {
        let r = CodeAnalysisRequest {
            correlation_id: "c".into(),
            source_path: "node.py".into(),
            content: "x = 1".into(),
            operation_type: CodeAnalysisOperation::QualityAssessment,
            language: "python".into(),
            options: Map::new(),
            project_id: None,
            user_id: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["operation_type"], "quality_assessment");
        assert!(v.get("payload").is_none());
    }

    #[test]
    fn replies_decode_bare_and_enveloped() {
        let bare =
            decode_reply(Some(br#"{"correlation_id":"a","quality_score":0.9,"x":1}"#)).unwrap();
        assert_eq!(bare.body_correlation_id.as_deref(), Some("a"));
        let env = json!({"event_id":"e","event_type":"codegen.response.analyze","correlation_id":"top",
                         "payload":{"correlation_id":"inner","confidence":0.9}});
        let env = decode_reply(Some(env.to_string().as_bytes())).unwrap();
        assert_eq!(env.body_correlation_id.as_deref(), Some("inner"));
        assert_eq!(env.body["confidence"], 0.9);
        let top_only = json!({"event_type":"x","correlation_id":"top","payload":{"confidence":1}});
        assert_eq!(
            decode_reply(Some(top_only.to_string().as_bytes()))
                .unwrap()
                .body_correlation_id
                .as_deref(),
            Some("top")
        );
        assert_eq!(
            decode_reply(Some(b"not json")).unwrap_err().kind(),
            "InvalidJson"
        );
        assert_eq!(
            decode_reply(Some(b"[1]")).unwrap_err().kind(),
            "NotAnObject"
        );
        assert_eq!(decode_reply(None).unwrap_err().kind(), "EmptyValue");
    }

    #[test]
    fn failed_replies_say_whether_to_retry() {
        let f = |code: &str, retry: Option<bool>| CodeAnalysisFailed {
            error_code: Some(code.into()),
            retry_allowed: retry,
            ..Default::default()
        };
        assert!(!f("INVALID_REQUEST", Some(true)).retryable());
        assert!(f("ANALYSIS_ERROR", Some(true)).retryable());
        assert!(!f("ANALYSIS_ERROR", Some(false)).retryable());
        assert!(f("TIMEOUT", None).retryable());
    }

    #[test]
    fn codegen_responses_expose_hints() {
        let r: CodegenResponse = serde_json::from_value(json!({
            "analysis_result": {"node_type_hints": ["reducer"], "recommended_mixins": ["MixinCaching"], "extra": 1},
            "mixin_recommendations": [{"mixin_name": "MixinRetry"}, "MixinMetrics", 3],
            "details": {"error_code": "MIXIN_ERROR"}
        })).unwrap();
        assert_eq!(r.analysis().node_type_hints, ["reducer"]);
        assert_eq!(r.mixin_names(), ["MixinRetry", "MixinMetrics"]);
        assert_eq!(r.error_code().as_deref(), Some("MIXIN_ERROR"));
    }
}
