//! The pure core, composed: PRD → plan → rendered nodes → quality reports → status.
//!
//! Shared by the offline `generate` command and the controller so that both produce
//! byte-identical files for the same manifest. No I/O happens here (the clock is read only for
//! the stage-duration metric).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::analysis::{self, IntelligenceHints, Overrides, Plan, PlannedNode};

use crate::api::{
    AnalysisStatus, Condition, ConditionStatus, DeploySpec, FIELD_MANAGER, GeneratedNodeDeploy,
    GeneratedNodeSpec, IntelligenceSource, LABEL_GENERATION, LABEL_MANAGED_BY, LABEL_NODE,
    NodeGenerationSpec, NodeGenerationStatus, NodeSource, NodeStatus, PlannedNodeStatus,
    SystemNodeStatus, SystemStatus,
};
use crate::naming::dns_label;
use crate::prd;
use crate::quality::{self, QualityReport, Thresholds};
use crate::render::{RenderedNode, RenderedShared, Renderer, SharedContext};
use crate::status::{self, ANALYZED, GENERATED, VALIDATED};

/// One generated node with its score.
#[derive(Debug, Clone)]
pub struct NodeOutcome {
    /// Name of the GeneratedNode (`<generation>-<service>-<type>`, DNS-1123).
    pub name: String,
    pub planned: PlannedNode,
    pub rendered: RenderedNode,
    pub report: QualityReport,
    /// Names of the GeneratedNodes of the nodes this one uses (its system's graph).
    pub depends_on: Vec<String>,
}

impl NodeOutcome {
    /// Labels of everything made for this node of generation `generation`.
    pub fn labels(&self, generation: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
            (LABEL_GENERATION.to_string(), generation.to_string()),
            (
                LABEL_NODE.to_string(),
                self.planned.service.replace('_', "-"),
            ),
        ])
    }

    /// The GeneratedNode spec of this node, with its code at `source` (a ConfigMap the
    /// operator applies, or a path of a Git commit).
    pub fn generated_node_spec(
        &self,
        deploy: &DeploySpec,
        source: NodeSource,
    ) -> GeneratedNodeSpec {
        GeneratedNodeSpec {
            node_type: self.planned.node_type,
            domain: self.planned.domain.clone(),
            service_name: self.planned.service.clone(),
            version: self.rendered.context.version_str.clone(),
            source,
            content_hash: self.rendered.content_hash.clone(),
            depends_on: self.depends_on.clone(),
            runtime: Some(self.rendered.context.runtime_requirement.clone()),
            deploy: GeneratedNodeDeploy {
                enabled: deploy.enabled,
                image: deploy.image.clone(),
                replicas: deploy.replicas,
                resources: deploy.resources.clone(),
                env: deploy.env.clone(),
                ..GeneratedNodeDeploy::default()
            },
        }
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub condition: &'static str,
    pub reason: String,
    pub message: String,
}

/// Everything the core decided for one NodeGeneration.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub correlation_id: String,
    pub plan: Option<Plan>,
    pub nodes: Vec<NodeOutcome>,
    /// The system's shared models package, when its nodes share types.
    pub shared: Option<RenderedShared>,
    /// Conditions `Analyzed`, `Generated`, `Validated` (in that order, as far as reached).
    pub conditions: Vec<Condition>,
    pub failure: Option<Failure>,
    /// Wall time of each stage, for the stage-duration metric only (never written to status:
    /// output stays byte-identical).
    pub stage_seconds: StageSeconds,
}

/// Seconds spent in each stage of one generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageSeconds {
    pub analysis: f64,
    pub render: f64,
    pub quality: f64,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// Say in the `Analyzed` condition why the built-in library was used although a service
    /// is configured.
    pub fn note_fallback(&mut self, why: &str) {
        if let Some(c) = self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == ANALYZED && c.is_true())
        {
            c.message.push_str(&format!(
                "; intelligence service unavailable ({why}), built-in pattern library used"
            ));
        }
    }

    /// Who scored the code: the service when it assessed every node.
    pub fn quality_source(&self) -> IntelligenceSource {
        if !self.nodes.is_empty() && self.nodes.iter().all(|n| n.report.service.is_some()) {
            IntelligenceSource::Omniarchon
        } else {
            IntelligenceSource::Builtin
        }
    }

    /// The parts of status the core owns (analysis, nodes, quality, node count).
    pub fn fill_status(&self, status: &mut NodeGenerationStatus) {
        status.analysis = self.plan.as_ref().map(|p| {
            Box::new(AnalysisStatus {
                source: p.source,
                quality_source: Some(self.quality_source()),
                confidence: p.confidence,
                correlation_id: self.correlation_id.clone(),
                domain: p.domain.clone(),
                service_name: p.service_name.clone(),
                external_systems: p.external_systems.iter().map(|e| e.name.clone()).collect(),
                patterns: p.patterns.clone(),
                nodes: p
                    .nodes
                    .iter()
                    .map(|n| PlannedNodeStatus {
                        node_type: n.node_type,
                        service_name: n.service.clone(),
                        confidence: n.type_confidence,
                        operations: n.operations.iter().map(|o| o.name.clone()).collect(),
                        mixins: n.mixins.clone(),
                    })
                    .collect(),
            })
        });
        status.nodes = self
            .nodes
            .iter()
            .map(|n| NodeStatus {
                name: n.name.clone(),
                node_type: n.planned.node_type,
                quality: n.report.overall,
                onex_score: n.report.onex_compliance,
                passed: n.report.passed,
                files: n.rendered.files.len() as i32,
                content_hash: n.rendered.content_hash.clone(),
                service_quality: n.report.service.as_ref().map(|s| s.quality_score),
            })
            .collect();
        status.system = self.system_status();
        status.node_count = self.plan.as_ref().map(|p| p.nodes.len() as i32);
        status.quality = self.nodes.iter().map(|n| n.report.overall).reduce(f64::min);
    }

    /// The system's nodes in rollout order, each `Generated` (the controller fills in the
    /// GeneratedNodes' states).
    fn system_status(&self) -> Option<SystemStatus> {
        let g = self.plan.as_ref()?.system.as_ref()?;
        let mut system = SystemStatus {
            ready: String::new(),
            nodes: g
                .dependency_order()
                .into_iter()
                .filter_map(|i| {
                    let node = self.nodes.get(i)?;
                    let guessed = g
                        .uses(i)
                        .filter(|used| g.guessed(i, *used))
                        .filter_map(|used| self.nodes.get(used).map(|n| n.name.clone()))
                        .collect();
                    Some(SystemNodeStatus {
                        name: node.name.clone(),
                        title: g.nodes.get(i).cloned().unwrap_or_default(),
                        uses: node.depends_on.clone(),
                        guessed,
                        state: "Generated".to_string(),
                    })
                })
                .collect(),
        };
        system.refresh(|_| None);
        Some(system)
    }
}

/// A deterministic correlation id for one generation of one object: a UUIDv5 over its identity
/// and spec, so re-running the same manifest yields the same id (and the same status).
pub fn correlation_id(
    namespace: &str,
    name: &str,
    generation: i64,
    spec: &NodeGenerationSpec,
) -> String {
    let spec_json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&spec_json);
    let key = format!("{namespace}/{name}/{generation}/{}", hex::encode(digest));
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
}

/// Name of the GeneratedNode for a planned node.
pub fn node_resource_name(generation: &str, node: &PlannedNode) -> String {
    let mut name = format!(
        "{generation}-{}-{}",
        dns_label(&node.service),
        node.node_type.as_str()
    );
    if name.len() > 63 {
        // Keep it a valid label: cut, then make the cut unique with a short hash.
        let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
        name.truncate(54);
        let trimmed = name.trim_end_matches('-').to_string();
        name = format!("{trimmed}-{hash}");
    }
    name
}

fn fail(outcome: &mut Outcome, condition: &'static str, reason: &str, message: String) {
    outcome.conditions.push(Condition::new(
        condition,
        ConditionStatus::False,
        reason,
        message.clone(),
    ));
    for (stage, _) in status::STAGES.iter().take(3) {
        if status::get(&outcome.conditions, stage).is_none() {
            outcome.conditions.push(Condition::new(
                stage,
                ConditionStatus::Unknown,
                "Blocked",
                format!("waiting for {condition}"),
            ));
        }
    }
    outcome.failure = Some(Failure {
        condition,
        reason: reason.to_string(),
        message,
    });
}

/// The outcome of a generation whose rendering of `what` failed (a custom template's error).
fn render_failed(
    mut outcome: Outcome,
    plan: Plan,
    what: &str,
    e: crate::render::RenderError,
) -> Outcome {
    outcome.plan = Some(plan);
    fail(
        &mut outcome,
        GENERATED,
        "RenderFailed",
        format!("rendering {what} failed: {e}"),
    );
    outcome
}

/// The analysis overrides a spec carries.
pub fn overrides<'a>(spec: &'a NodeGenerationSpec, generation_name: &'a str) -> Overrides<'a> {
    Overrides {
        node_types: spec.node_types.as_deref(),
        domain: spec.domain.as_deref(),
        service_name: spec.service_name.as_deref(),
        fallback_name: generation_name,
        workflow: spec.workflow.as_ref(),
    }
}

/// Run the core for one NodeGeneration whose PRD text has been resolved.
pub fn run(
    renderer: &Renderer,
    generation_name: &str,
    spec: &NodeGenerationSpec,
    prd_text: &str,
    correlation_id: String,
    hints: Option<&IntelligenceHints>,
) -> Outcome {
    let mut outcome = Outcome {
        correlation_id,
        plan: None,
        nodes: Vec::new(),
        shared: None,
        conditions: Vec::new(),
        failure: None,
        stage_seconds: StageSeconds::default(),
    };
    let clock = Instant::now();

    let parsed = match prd::parse(prd_text) {
        Ok(p) => p,
        Err(e) => {
            fail(&mut outcome, ANALYZED, e.reason(), e.to_string());
            return outcome;
        }
    };
    let overrides = overrides(spec, generation_name);
    let plan =
        tracing::info_span!("analysis").in_scope(|| analysis::plan(&parsed, &overrides, hints));
    outcome.stage_seconds.analysis = clock.elapsed().as_secs_f64();
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            fail(&mut outcome, ANALYZED, e.reason(), e.to_string());
            return outcome;
        }
    };
    let summary = plan
        .nodes
        .iter()
        .map(|n| format!("{} {} ({:.2})", n.node_type, n.service, n.type_confidence))
        .collect::<Vec<_>>()
        .join(", ");
    outcome.conditions.push(Condition::new(
        ANALYZED,
        ConditionStatus::True,
        match plan.source {
            crate::api::IntelligenceSource::Omniarchon => "AnalyzedByService",
            crate::api::IntelligenceSource::Builtin => "AnalyzedBuiltin",
        },
        format!("{} node(s) planned: {summary}", plan.nodes.len()),
    ));

    let thresholds = Thresholds {
        overall: spec.quality.threshold,
        onex: spec.quality.onex_threshold,
    };
    let shared_context = SharedContext::new(&plan, generation_name);
    let clock = Instant::now();
    let mut scoring = Duration::ZERO;
    if let Some(ctx) = &shared_context {
        match renderer.render_shared(ctx) {
            Ok(shared) => outcome.shared = Some(shared),
            Err(e) => return render_failed(outcome, plan, "the shared models", e),
        }
    }
    for (index, node) in plan.nodes.iter().enumerate() {
        let node_shared = shared_context.as_ref().and_then(|c| c.for_node(index));
        let rendered = tracing::info_span!("render", node = %node.service).in_scope(|| {
            renderer.render(
                node,
                generation_name,
                &plan.external_systems,
                &plan.dependencies,
                node_shared,
            )
        });
        let mut rendered = match rendered {
            Ok(r) => r,
            Err(e) => return render_failed(outcome, plan.clone(), &node.service, e),
        };
        if let (Some(shared), Some(_)) = (&outcome.shared, &rendered.context.shared) {
            rendered.shared_hash = Some(shared.content_hash.clone());
            rendered.rehash();
        }
        let scored = Instant::now();
        let report = tracing::info_span!("quality", node = %node.service)
            .in_scope(|| quality::score(&rendered, thresholds));
        scoring += scored.elapsed();
        outcome.nodes.push(NodeOutcome {
            name: node_resource_name(generation_name, node),
            planned: node.clone(),
            rendered,
            report,
            depends_on: Vec::new(),
        });
    }
    if let Some(g) = &plan.system {
        for (user, used) in &g.edges {
            let name = outcome.nodes.get(*used).map(|n| n.name.clone());
            if let (Some(name), Some(node)) = (name, outcome.nodes.get_mut(*user)) {
                node.depends_on.push(name);
            }
        }
    }
    outcome.plan = Some(plan);
    let files: usize = outcome.nodes.iter().map(|n| n.rendered.files.len()).sum();
    outcome.conditions.push(Condition::new(
        GENERATED,
        ConditionStatus::True,
        "Rendered",
        format!("{} node(s), {files} files rendered", outcome.nodes.len()),
    ));

    outcome.stage_seconds.render = (clock.elapsed() - scoring).as_secs_f64();
    let clock = Instant::now();
    let shared_issues = outcome
        .shared
        .as_ref()
        .map(quality::check_shared)
        .unwrap_or_default();
    outcome.stage_seconds.quality = (scoring + clock.elapsed()).as_secs_f64();
    if !shared_issues.is_empty() {
        let issues: Vec<String> = shared_issues
            .iter()
            .take(3)
            .map(|d| format!("{}:{}: {} ({})", d.file, d.line, d.message, d.rule))
            .collect();
        fail(
            &mut outcome,
            VALIDATED,
            "QualityGateFailed",
            format!(
                "the shared models package does not pass: {}",
                issues.join("; ")
            ),
        );
        return outcome;
    }
    let failed: Vec<String> = outcome
        .nodes
        .iter()
        .filter(|n| !n.report.passed)
        .map(|n| {
            let rules: Vec<&str> = n.report.deductions.iter().take(3).map(|d| d.rule.as_str()).collect();
            format!(
                "{}: overall {:.3} (threshold {:.2}), ONEX {:.3} (threshold {:.2}){}; top deductions: {}",
                n.name,
                n.report.overall,
                thresholds.overall,
                n.report.onex_compliance,
                thresholds.onex,
                if n.report.parses { "" } else { ", code does not parse" },
                rules.join(", ")
            )
        })
        .collect();
    if failed.is_empty() {
        let lowest = outcome
            .nodes
            .iter()
            .map(|n| n.report.overall)
            .fold(1.0f64, f64::min);
        outcome.conditions.push(Condition::new(
            VALIDATED,
            ConditionStatus::True,
            "QualityGatePassed",
            format!("all nodes pass the quality gate (lowest overall {lowest:.3})"),
        ));
    } else {
        fail(
            &mut outcome,
            VALIDATED,
            "QualityGateFailed",
            failed.join("; "),
        );
    }
    outcome
}
