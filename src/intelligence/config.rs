//! Configuration of the intelligence client: flags with environment twins, shared by
//! `generate` and `run`. Topic names default to the live contracts (CONTRACTS.md §1).

use std::time::Duration;

use super::wire::CodegenOperation;

#[derive(clap::Args, Clone, Debug)]
pub struct IntelligenceConfig {
    /// Kafka bootstrap servers; without them the built-in pattern library is used.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,
    /// Extra librdkafka properties (`key=value`, repeatable or comma-separated), e.g.
    /// `security.protocol=SASL_SSL`.
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub kafka_properties: Vec<String>,
    /// Create the operator's topics when missing (turn off where topics are managed elsewhere).
    #[arg(long, env = "KAFKA_ENSURE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_ensure_topics: bool,
    /// Prefix put before every topic name (test isolation, multi-tenant clusters).
    #[arg(long, env = "KAFKA_TOPIC_PREFIX", default_value = "")]
    pub kafka_topic_prefix: String,

    #[arg(
        long,
        env = "TOPIC_CODE_ANALYSIS_REQUEST",
        default_value = "onex.cmd.omniintelligence.code-analysis.v1"
    )]
    pub topic_code_analysis_request: String,
    #[arg(
        long,
        env = "TOPIC_CODE_ANALYSIS_COMPLETED",
        default_value = "onex.evt.omniintelligence.code-analysis-completed.v1"
    )]
    pub topic_code_analysis_completed: String,
    #[arg(
        long,
        env = "TOPIC_CODE_ANALYSIS_FAILED",
        default_value = "onex.evt.omniintelligence.code-analysis-failed.v1"
    )]
    pub topic_code_analysis_failed: String,
    /// Codegen request topics: `{op}` is analyze, validate, pattern or mixin.
    #[arg(
        long,
        env = "TOPIC_CODEGEN_REQUEST",
        default_value = "omninode.codegen.request.{op}.v1"
    )]
    pub topic_codegen_request: String,
    #[arg(
        long,
        env = "TOPIC_CODEGEN_RESPONSE",
        default_value = "omninode.codegen.response.{op}.v1"
    )]
    pub topic_codegen_response: String,
    #[arg(
        long,
        env = "TOPIC_CODEGEN_STATUS",
        default_value = "omninode.codegen.status.v1"
    )]
    pub topic_codegen_status: String,
    /// Dead-letter topic of a topic: `{topic}` is replaced by its name.
    #[arg(long, env = "TOPIC_DLQ", default_value = "{topic}.dlq")]
    pub topic_dlq: String,

    /// Timeout of analyze, pattern and mixin requests.
    #[arg(long, env = "INTELLIGENCE_TIMEOUT_MS", default_value_t = 5000)]
    pub intelligence_timeout_ms: u64,
    /// Timeout of code-analysis and validate requests.
    #[arg(
        long,
        env = "INTELLIGENCE_CODE_ANALYSIS_TIMEOUT_MS",
        default_value_t = 10000
    )]
    pub intelligence_code_analysis_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    #[arg(long, env = "INTELLIGENCE_BREAKER_THRESHOLD", default_value_t = 5)]
    pub intelligence_breaker_threshold: u32,
    /// How long an open breaker waits before a half-open probe.
    #[arg(
        long,
        env = "INTELLIGENCE_BREAKER_RECOVERY_MS",
        default_value_t = 30000
    )]
    pub intelligence_breaker_recovery_ms: u64,
    /// Retries of a request whose failed reply allows it (and of transient send failures).
    #[arg(long, env = "INTELLIGENCE_MAX_RETRIES", default_value_t = 2)]
    pub intelligence_max_retries: u32,
    /// First retry delay; doubled on each retry.
    #[arg(long, env = "INTELLIGENCE_RETRY_BACKOFF_MS", default_value_t = 100)]
    pub intelligence_retry_backoff_ms: u64,
}

impl Default for IntelligenceConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: IntelligenceConfig,
        }
        // Parsing no arguments yields the documented defaults (environment included).
        match Defaults::try_parse_from(["defaults"]) {
            Ok(d) => d.config,
            Err(e) => panic!("intelligence defaults do not parse: {e}"),
        }
    }
}

impl IntelligenceConfig {
    fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.kafka_topic_prefix)
    }
    pub fn code_analysis_request(&self) -> String {
        self.prefixed(&self.topic_code_analysis_request)
    }
    pub fn code_analysis_completed(&self) -> String {
        self.prefixed(&self.topic_code_analysis_completed)
    }
    pub fn code_analysis_failed(&self) -> String {
        self.prefixed(&self.topic_code_analysis_failed)
    }
    pub fn codegen_request(&self, op: CodegenOperation) -> String {
        self.prefixed(&self.topic_codegen_request.replace("{op}", op.as_str()))
    }
    pub fn codegen_response(&self, op: CodegenOperation) -> String {
        self.prefixed(&self.topic_codegen_response.replace("{op}", op.as_str()))
    }
    pub fn codegen_status(&self) -> String {
        self.prefixed(&self.topic_codegen_status)
    }
    pub fn dlq(&self, topic: &str) -> String {
        self.topic_dlq.replace("{topic}", topic)
    }

    /// Topics the operator consumes replies from.
    pub fn reply_topics(&self) -> Vec<String> {
        let mut t = vec![self.code_analysis_completed(), self.code_analysis_failed()];
        t.extend(
            CodegenOperation::ALL
                .iter()
                .map(|op| self.codegen_response(*op)),
        );
        t
    }

    /// Every topic the operator produces to or consumes from.
    pub fn all_topics(&self) -> Vec<String> {
        let mut t = vec![self.code_analysis_request(), self.codegen_status()];
        t.extend(
            CodegenOperation::ALL
                .iter()
                .map(|op| self.codegen_request(*op)),
        );
        for reply in self.reply_topics() {
            t.push(self.dlq(&reply));
            t.push(reply);
        }
        t
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.intelligence_timeout_ms)
    }
    pub fn code_analysis_timeout(&self) -> Duration {
        Duration::from_millis(self.intelligence_code_analysis_timeout_ms)
    }

    /// `key=value` librdkafka properties.
    pub fn properties(&self) -> Vec<(String, String)> {
        self.kafka_properties
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect()
    }
}
