//! End-to-end: the operator binary against a real control plane, driven with the real kubectl.
//!
//! Runs when `KUBEBUILDER_ASSETS` or `OMNINODE_E2E_KUBECONFIG` is set (see
//! tests/support/cluster.rs), and skips with a one-line message otherwise. Each scenario gets
//! its own namespace and its own operator process watching it.
//! `cargo test --test e2e -- <substring>` runs the scenarios whose name contains it.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cluster::{Cluster, HOW_TO_ENABLE, Operator};

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($fmt)+));
        }
    };
}

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

/// Poll `check` until it says true, or fail after `timeout` with its last answer.
fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what} {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kubectl apply` one example into `ns` and wait until its NodeGeneration is Ready.
fn apply_example(c: &Cluster, ns: &str, file: &str, name: &str) -> Outcome {
    let path = examples_dir().join(file).display().to_string();
    c.kubectl_ok(&["apply", "-n", ns, "-f", &path])?;
    wait_ready(c, ns, name)
}

/// `kubectl wait` until NodeGeneration `name` is Ready (at most 60 s).
fn wait_ready(c: &Cluster, ns: &str, name: &str) -> Outcome {
    let target = format!("ng/{name}");
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &target,
        "-n",
        ns,
        "--timeout=60s",
    ])
    .map(|_| ())
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn ready(obj: &Value) -> bool {
    condition(obj, "Ready").is_some_and(|c| c["status"] == "True")
        && obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn owned_by(obj: &Value, kind: &str, uid: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| {
            o.iter()
                .any(|r| r["kind"] == kind && &r["uid"] == uid && r["controller"] == true)
        })
}

/// Every example becomes Ready, with the expected children, labels, owners, probes, command and
/// security context; `kubectl get ng` shows the columns; a settled namespace sees no writes.
fn examples_become_ready(c: &Cluster) -> Outcome {
    let ns = "e2e-examples";
    c.create_namespace(ns)?;
    let op = Operator::start(c, ns, &[])?;
    c.kubectl_ok(&[
        "apply",
        "-n",
        ns,
        "-f",
        &examples_dir().display().to_string(),
    ])?;
    let names: Vec<String> = items(&c.json(&["get", "ng", "-n", ns])?)
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    ensure!(names.len() >= 9, "expected the 9 examples, got {names:?}");
    let started = Instant::now();
    for name in &names {
        wait_ready(c, ns, name)?;
    }
    println!(
        "    all {} examples Ready after {:.1} s",
        names.len(),
        started.elapsed().as_secs_f64()
    );

    let mut children = 0;
    for ng in items(&c.json(&["get", "ng", "-n", ns])?) {
        let name = ng["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let uid = &ng["metadata"]["uid"];
        let nodes = ng["status"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(!nodes.is_empty(), "{name}: no nodes in status");
        for node in nodes {
            let node_name = node["name"].as_str().unwrap_or_default();
            let gn = c.json(&["get", "gn", node_name, "-n", ns])?;
            let labels = &gn["metadata"]["labels"];
            ensure!(
                labels["app.kubernetes.io/managed-by"] == "omninode-operator",
                "{node_name}: labels {labels}"
            );
            ensure!(
                labels["codegen.omninode.ai/generation"] == name.as_str(),
                "{node_name}: labels {labels}"
            );
            ensure!(
                labels["codegen.omninode.ai/node"].is_string(),
                "{node_name}: labels {labels}"
            );
            ensure!(
                owned_by(&gn, "NodeGeneration", uid),
                "{node_name}: not owned by {name}"
            );
            ensure!(
                gn["spec"]["contentHash"] == node["contentHash"],
                "{node_name}: content hash"
            );
            let cm = c.json(&["get", "configmap", &format!("{node_name}-code"), "-n", ns])?;
            ensure!(
                owned_by(&cm, "NodeGeneration", uid),
                "{node_name}-code: not owned by {name}"
            );
            ensure!(
                cm["metadata"]["annotations"]["codegen.omninode.ai/content-hash"]
                    == node["contentHash"],
                "{node_name}-code: content hash annotation"
            );
            // The GeneratedNode controller's children.
            let gn_uid = &gn["metadata"]["uid"];
            let mut deploy = Value::Null;
            wait_until(Duration::from_secs(20), "the Deployment", || {
                deploy = c.json(&["get", "deployment", node_name, "-n", ns])?;
                Ok(true)
            })?;
            ensure!(
                owned_by(&deploy, "GeneratedNode", gn_uid),
                "{node_name}: Deployment owner"
            );
            ensure!(
                deploy["metadata"]["labels"]["codegen.omninode.ai/generation"] == name.as_str(),
                "Deployment labels"
            );
            let pod = &deploy["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            let command = container["command"].to_string();
            ensure!(
                command.contains("start_node.py"),
                "{node_name}: command {command}"
            );
            ensure!(
                container["livenessProbe"]["httpGet"]["path"] == "/health/live",
                "liveness probe"
            );
            ensure!(
                container["readinessProbe"]["httpGet"]["path"] == "/health/ready",
                "readiness probe"
            );
            ensure!(
                container["startupProbe"]["httpGet"]["path"] == "/health/live",
                "startup probe"
            );
            let sc = &container["securityContext"];
            ensure!(
                sc["runAsNonRoot"] == true
                    && sc["allowPrivilegeEscalation"] == false
                    && sc["readOnlyRootFilesystem"] == true
                    && sc["capabilities"]["drop"][0] == "ALL"
                    && sc["seccompProfile"]["type"] == "RuntimeDefault",
                "{node_name}: securityContext {sc}"
            );
            ensure!(
                deploy["spec"]["template"]["metadata"]["annotations"]["codegen.omninode.ai/content-hash"]
                    == node["contentHash"],
                "{node_name}: pod template content hash"
            );
            let svc = c.json(&["get", "service", node_name, "-n", ns])?;
            ensure!(
                owned_by(&svc, "GeneratedNode", gn_uid),
                "{node_name}: Service owner"
            );
            children += 1;
        }
    }
    println!("    {children} nodes: GeneratedNode, ConfigMap, Deployment and Service each checked");

    let table = c.kubectl_ok(&["get", "ng", "-n", ns])?;
    let header = table.lines().next().unwrap_or_default().to_string();
    for column in ["NAME", "PHASE", "NODES", "QUALITY", "READY", "AGE"] {
        ensure!(
            header.contains(column),
            "kubectl get ng header lacks {column}: {header}"
        );
    }
    ensure!(
        table
            .lines()
            .skip(1)
            .all(|l| l.contains("Completed") && l.contains("True")),
        "table:\n{table}"
    );
    println!(
        "    kubectl get ng:\n{}",
        table
            .lines()
            .take(4)
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Settled: no writes, no resourceVersion moves over 30 s.
    std::thread::sleep(Duration::from_secs(3));
    let versions = || -> Result<String, String> {
        c.kubectl_ok(&["get", "ng,gn,configmap,service", "-n", ns, "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}"])
    };
    let before = versions()?;
    let writes_before = op.writes()?;
    std::thread::sleep(Duration::from_secs(30));
    let after = versions()?;
    let writes_after = op.writes()?;
    ensure!(
        before == after,
        "resourceVersions moved while settled:\n{before}\n---\n{after}"
    );
    ensure!(
        writes_before == writes_after,
        "operator wrote {} times while settled",
        writes_after - writes_before
    );
    println!(
        "    settled for 30 s: {} objects, resourceVersions unchanged, 0 writes",
        before.lines().count()
    );
    Ok(())
}

fn generation_of(c: &Cluster, ns: &str, name: &str) -> Result<Value, String> {
    c.json(&["get", "ng", name, "-n", ns])
}

/// Editing the PRD regenerates: new content hash, new pod template.
fn prd_edit_regenerates(c: &Cluster) -> Outcome {
    let ns = "e2e-edit";
    c.create_namespace(ns)?;
    let _op = Operator::start(c, ns, &[])?;
    apply_example(c, ns, "effect-postgres-writer.yaml", "postgres-writer")?;
    let ng = generation_of(c, ns, "postgres-writer")?;
    let node = ng["status"]["nodes"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let old_hash = ng["status"]["nodes"][0]["contentHash"].clone();
    let mut old_template = Value::Null;
    wait_until(Duration::from_secs(20), "the Deployment", || {
        old_template = c.json(&["get", "deployment", &node, "-n", ns])?["spec"]["template"]["metadata"]["annotations"].clone();
        Ok(true)
    })?;
    let prd = ng["spec"]["prd"].as_str().unwrap_or_default().to_string()
        + "\n- Archive orders older than a year to cold storage\n";
    let patch = serde_json::json!({"spec": {"prd": prd}}).to_string();
    c.kubectl_ok(&[
        "patch",
        "ng",
        "postgres-writer",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    wait_until(Duration::from_secs(60), "regeneration", || {
        let ng = generation_of(c, ns, "postgres-writer")?;
        Ok(ready(&ng) && ng["status"]["nodes"][0]["contentHash"] != old_hash)
    })?;
    let new_hash =
        generation_of(c, ns, "postgres-writer")?["status"]["nodes"][0]["contentHash"].clone();
    wait_until(
        Duration::from_secs(30),
        "the pod template to change",
        || {
            let t = c.json(&["get", "deployment", &node, "-n", ns])?["spec"]["template"]["metadata"]["annotations"].clone();
            Ok(t != old_template && t["codegen.omninode.ai/content-hash"] == new_hash)
        },
    )?;
    let gn = c.json(&["get", "gn", &node, "-n", ns])?;
    ensure!(
        gn["spec"]["contentHash"] == new_hash,
        "GeneratedNode not updated"
    );
    println!(
        "    content hash {} → {}; pod template rolled",
        &old_hash.to_string()[1..13],
        &new_hash.to_string()[1..13]
    );
    Ok(())
}

/// A PRD that is no PRD ends Ready=False with a CamelCase reason, a Warning Event, no children.
fn invalid_prd_fails_cleanly(c: &Cluster) -> Outcome {
    let ns = "e2e-invalid";
    c.create_namespace(ns)?;
    let _op = Operator::start(c, ns, &[])?;
    c.apply(ns, "apiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata:\n  name: broken\nspec:\n  prd: \"   \\n\\n  \"\n")?;
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready=False",
        "ng/broken",
        "-n",
        ns,
        "--timeout=60s",
    ])?;
    let ng = generation_of(c, ns, "broken")?;
    let cond = condition(&ng, "Ready").cloned().unwrap_or_default();
    let reason = cond["reason"].as_str().unwrap_or_default();
    ensure!(
        !reason.is_empty()
            && reason
                .chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_uppercase())
            && reason.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "reason {reason:?} is not CamelCase"
    );
    ensure!(
        !cond["message"].as_str().unwrap_or_default().is_empty(),
        "no message"
    );
    ensure!(
        ng["status"]["phase"] == "Failed",
        "phase {}",
        ng["status"]["phase"]
    );
    wait_until(Duration::from_secs(10), "a Warning Event", || {
        let events = c.json(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "type=Warning",
        ])?;
        Ok(items(&events)
            .iter()
            .any(|e| e["reason"] == reason && e["involvedObject"]["name"] == "broken"))
    })?;
    for kind in ["gn", "configmap", "deployment"] {
        let found = items(&c.json(&[
            "get",
            kind,
            "-n",
            ns,
            "-l",
            "codegen.omninode.ai/generation=broken",
        ])?);
        ensure!(found.is_empty(), "{kind} written for a broken PRD");
    }
    println!("    Ready=False reason {reason}, Warning Event recorded, no children");
    Ok(())
}

/// `prdFrom`: editing the ConfigMap regenerates.
fn prd_from_config_map_is_watched(c: &Cluster) -> Outcome {
    let ns = "e2e-prdfrom";
    c.create_namespace(ns)?;
    let _op = Operator::start(c, ns, &[])?;
    let prd = "# Invoice Renderer\n\n## Overview\nRenders invoices to PDF from order data.\n\n## Functional Requirements\n- Transform order data into invoice documents\n- Calculate tax totals\n";
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prds"}, "data": {"invoice.md": prd}});
    let ng = "apiVersion: codegen.omninode.ai/v1alpha1\nkind: NodeGeneration\nmetadata:\n  name: invoice\nspec:\n  prdFrom:\n    configMapKeyRef: {name: prds, key: invoice.md}\n";
    // The NodeGeneration first: it waits for its ConfigMap, then picks it up when it appears.
    c.apply(ns, ng)?;
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready=False",
        "ng/invoice",
        "-n",
        ns,
        "--timeout=60s",
    ])?;
    c.apply(ns, &cm.to_string())?;
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "ng/invoice",
        "-n",
        ns,
        "--timeout=60s",
    ])?;
    let before = generation_of(c, ns, "invoice")?["status"]["nodes"][0]["contentHash"].clone();
    let edited = format!("{prd}- Attach the invoice to an email\n");
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prds"}, "data": {"invoice.md": edited}});
    c.apply(ns, &cm.to_string())?;
    wait_until(
        Duration::from_secs(60),
        "regeneration from the edited ConfigMap",
        || {
            let ng = generation_of(c, ns, "invoice")?;
            Ok(ready(&ng) && ng["status"]["nodes"][0]["contentHash"] != before)
        },
    )?;
    println!("    PrdSourceNotFound until the ConfigMap appeared; its edit regenerated");
    Ok(())
}

/// A GeneratedNode written by hand, without a NodeGeneration, gets its Deployment.
fn hand_written_generated_node(c: &Cluster) -> Outcome {
    let ns = "e2e-handwritten";
    c.create_namespace(ns)?;
    let _op = Operator::start(c, ns, &[])?;
    let yaml = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: hello-code}
data:
  v1_0_0-start_node.py: "print('hello')\n"
  v1_0_0-node.py: "X = 1\n"
---
apiVersion: codegen.omninode.ai/v1alpha1
kind: GeneratedNode
metadata: {name: hello-effect}
spec:
  nodeType: Effect
  domain: api
  serviceName: hello
  source: {configMap: {name: hello-code}}
  contentHash: handmade1
"#;
    c.apply(ns, yaml)?;
    wait_until(
        Duration::from_secs(30),
        "the Deployment and the status",
        || {
            let gn = c.json(&["get", "gn", "hello-effect", "-n", ns])?;
            let d = c.json(&["get", "deployment", "hello-effect", "-n", ns])?;
            Ok(condition(&gn, "Ready").is_some()
                && d["spec"]["template"]["metadata"]["annotations"]["codegen.omninode.ai/content-hash"]
                    == "handmade1")
        },
    )?;
    let gn = c.json(&["get", "gn", "hello-effect", "-n", ns])?;
    println!(
        "    Deployment created; Ready={} ({})",
        condition(&gn, "Ready")
            .map(|c| c["status"].clone())
            .unwrap_or_default(),
        condition(&gn, "Ready")
            .map(|c| c["reason"].clone())
            .unwrap_or_default()
    );
    Ok(())
}

/// Deleting a NodeGeneration garbage-collects everything under it (kube-controller-manager).
fn deletion_collects_children(c: &Cluster) -> Outcome {
    if !c.has_controller_manager {
        println!(
            "    skipped: no kube-controller-manager in KUBEBUILDER_ASSETS, so no garbage collector"
        );
        return Ok(());
    }
    let ns = "e2e-delete";
    c.create_namespace(ns)?;
    let _op = Operator::start(c, ns, &[])?;
    apply_example(c, ns, "system-fraud-detection.yaml", "fraud-detection")?;
    let selector = "codegen.omninode.ai/generation=fraud-detection";
    wait_until(Duration::from_secs(30), "Deployments", || {
        Ok(!items(&c.json(&["get", "deployment", "-n", ns, "-l", selector])?).is_empty())
    })?;
    c.kubectl_ok(&[
        "delete",
        "ng",
        "fraud-detection",
        "-n",
        ns,
        "--wait=true",
        "--timeout=60s",
    ])?;
    wait_until(Duration::from_secs(60), "garbage collection", || {
        let left = items(&c.json(&[
            "get",
            "gn,configmap,deployment,service",
            "-n",
            ns,
            "-l",
            selector,
        ])?);
        Ok(left.is_empty())
    })?;
    println!("    GeneratedNodes, ConfigMaps, Deployments and Services collected");
    Ok(())
}

/// SIGTERM ends the operator cleanly.
fn graceful_shutdown(c: &Cluster) -> Outcome {
    let ns = "e2e-shutdown";
    c.create_namespace(ns)?;
    let mut op = Operator::start(c, ns, &[])?;
    let (status, took) = op.terminate().ok_or("operator not running")?;
    ensure!(status.success(), "exit status {status}");
    ensure!(took < Duration::from_secs(10), "took {took:?}");
    println!("    exit 0 after SIGTERM in {:.2} s", took.as_secs_f64());
    Ok(())
}

fn ready_count(c: &Cluster, ns: &str) -> Result<(usize, Vec<Value>), String> {
    let all = items(&c.json(&["get", "ng", "-n", ns])?);
    Ok((all.iter().filter(|n| ready(n)).count(), all))
}

/// Kill the operator (SIGKILL) in the middle of 200 generations; after a restart all 200 are
/// Ready, with no duplicate or orphaned children and no lost status.
fn kill_and_restart_mid_flight(c: &Cluster) -> Outcome {
    let ns = "e2e-restart";
    c.create_namespace(ns)?;
    let mut op = Operator::start(c, ns, &["--concurrency", "4"])?;
    c.apply(ns, &support::cluster::many_generations(200)?)?;
    wait_until(
        Duration::from_secs(120),
        "some generations to be Ready",
        || Ok(ready_count(c, ns)?.0 >= 40),
    )?;
    op.kill();
    let at_kill = ready_count(c, ns)?.0;
    op.restart()?;
    let started = Instant::now();
    wait_until(Duration::from_secs(240), "all 200 Ready", || {
        Ok(ready_count(c, ns)?.0 == 200)
    })?;
    let (_, all) = ready_count(c, ns)?;
    let mut planned = BTreeSet::new();
    for ng in &all {
        let nodes = ng["status"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(
            !nodes.is_empty() && ng["status"]["analysis"].is_object(),
            "status of {} lost",
            ng["metadata"]["name"]
        );
        for n in nodes {
            planned.insert(n["name"].as_str().unwrap_or_default().to_string());
        }
    }
    let names = |kind: &str| -> Result<Vec<String>, String> {
        Ok(items(&c.json(&["get", kind, "-n", ns])?)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    };
    let gns = names("gn")?;
    ensure!(
        gns.len() == planned.len(),
        "{} GeneratedNodes for {} planned nodes",
        gns.len(),
        planned.len()
    );
    ensure!(
        gns.iter().cloned().collect::<BTreeSet<_>>() == planned,
        "GeneratedNodes differ from the planned nodes"
    );
    let cms: BTreeSet<String> = names("configmap")?
        .into_iter()
        .filter(|n| n.ends_with("-code"))
        .collect();
    let want: BTreeSet<String> = planned.iter().map(|n| format!("{n}-code")).collect();
    ensure!(cms == want, "code ConfigMaps differ from the planned nodes");
    println!(
        "    killed with {at_kill}/200 Ready; after restart all 200 Ready in {:.1} s; {} GeneratedNodes, {} ConfigMaps, none duplicated or orphaned",
        started.elapsed().as_secs_f64(),
        gns.len(),
        cms.len()
    );
    Ok(())
}

/// With the real broker and the stand-in responder the analysis comes from the service; with
/// the responder stopped, generations still complete from the built-in library.
fn intelligence_service_and_fallback(c: &Cluster) -> Outcome {
    let Ok(bin) = std::env::var("TANSU_BIN") else {
        if std::env::var("CI").is_ok() {
            return Err("TANSU_BIN is not set; scripts/test-all.sh installs the broker".into());
        }
        println!("    skipped: no Kafka broker (set TANSU_BIN)");
        return Ok(());
    };
    let port = support::kafka::free_port();
    let broker = support::kafka::Broker::start(&bin, port);
    let servers = broker.servers();
    let prefix = "e2e.";
    // Create the topics (as the operator would) before the responder subscribes to them.
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = omninode_operator::intelligence::IntelligenceClient::connect(
            support::kafka::config(&servers, prefix),
            Default::default(),
        )
        .map_err(|e| e.to_string())?;
        if client.wait_ready(Duration::from_secs(30)).await {
            Ok(())
        } else {
            Err("topics not ready".to_string())
        }
    })?;
    let responder = support::kafka::Responder::start(&servers, prefix, &[]);
    let ns = "e2e-intelligence";
    c.create_namespace(ns)?;
    let _op = Operator::start(
        c,
        ns,
        &[
            "--kafka-bootstrap-servers",
            &servers,
            "--kafka-topic-prefix",
            prefix,
        ],
    )?;
    apply_example(c, ns, "effect-email-notifier.yaml", "email-notifier")?;
    let source = generation_of(c, ns, "email-notifier")?["status"]["analysis"]["source"].clone();
    ensure!(
        source == "omniarchon",
        "source {source} with the responder running"
    );
    drop(responder);
    apply_example(c, ns, "compute-price-calculator.yaml", "price-calculator")?;
    let ng = generation_of(c, ns, "price-calculator")?;
    ensure!(
        ng["status"]["analysis"]["source"] == "builtin",
        "source {} without the responder",
        ng["status"]["analysis"]["source"]
    );
    let analyzed = condition(&ng, "Analyzed").cloned().unwrap_or_default();
    println!(
        "    with the responder: omniarchon; without: builtin ({})",
        analyzed["message"]
            .as_str()
            .unwrap_or_default()
            .split("; ")
            .last()
            .unwrap_or_default()
    );
    drop(broker);
    Ok(())
}

/// Two replicas with leader election: only the lease holder reconciles; when it dies, the
/// standby takes over.
fn leader_election_fails_over(c: &Cluster) -> Outcome {
    let ns = "e2e-leader";
    c.create_namespace(ns)?;
    let flags = [
        "--leader-elect",
        "true",
        "--lease-namespace",
        ns,
        "--lease-duration-seconds",
        "5",
    ];
    let mut first = Operator::start(c, ns, &flags)?;
    // Let the first one take the lease before the second starts.
    wait_until(Duration::from_secs(20), "the lease", || {
        Ok(c.kubectl_ok(&[
            "get",
            "lease",
            "omninode-operator",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .is_ok_and(|h| !h.is_empty()))
    })?;
    let second = Operator::start(c, ns, &flags)?;
    apply_example(c, ns, "effect-email-notifier.yaml", "email-notifier")?;
    let reconciles = |op: &Operator| op.counter("omninode_reconciles_total", &[]);
    // Ready shows before the reconcile that wrote it has finished (its Event is still on the
    // way), and only finished reconciles are counted: wait for the leader's count.
    wait_until(
        Duration::from_secs(10),
        "the leader's reconciles to be counted",
        || Ok(reconciles(&first)? >= 1.0),
    )?;
    let standby = reconciles(&second)?;
    ensure!(
        standby == 0.0,
        "the standby reconciled {standby} times while not leading"
    );
    first.kill();
    let killed = Instant::now();
    apply_example(c, ns, "compute-price-calculator.yaml", "price-calculator")?;
    let taken_over = reconciles(&second)?;
    ensure!(taken_over >= 1.0, "the standby never took over");
    println!(
        "    only the leader reconciled; after SIGKILL the standby took over and finished a new generation in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The operator's `/metrics` passes `promtool check metrics` (Debian's `prometheus` package),
/// after it has done some work so that every family has samples.
fn metrics_pass_promtool(c: &Cluster) -> Outcome {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    if Command::new(&promtool).arg("--version").output().is_err() {
        println!("    skipped: no promtool (apt-get install prometheus, or set PROMTOOL)");
        return Ok(());
    }
    let ns = "e2e-metrics";
    c.create_namespace(ns)?;
    let op = Operator::start(c, ns, &[])?;
    apply_example(c, ns, "effect-email-notifier.yaml", "email-notifier")?;
    let metrics = op.get("/metrics")?;
    let out = support::cluster::pipe(Command::new(&promtool).args(["check", "metrics"]), &metrics)?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    println!(
        "    promtool check metrics: clean ({} lines)",
        metrics.lines().count()
    );
    Ok(())
}

type Scenario = (&'static str, fn(&Cluster) -> Outcome);

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cluster = match Cluster::from_env() {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("e2e: skipped (no control plane): {HOW_TO_ENABLE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("e2e: could not start the control plane: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scenarios: [Scenario; 11] = [
        ("examples_become_ready", examples_become_ready),
        ("prd_edit_regenerates", prd_edit_regenerates),
        ("invalid_prd_fails_cleanly", invalid_prd_fails_cleanly),
        (
            "prd_from_config_map_is_watched",
            prd_from_config_map_is_watched,
        ),
        ("hand_written_generated_node", hand_written_generated_node),
        ("deletion_collects_children", deletion_collects_children),
        ("graceful_shutdown", graceful_shutdown),
        ("metrics_pass_promtool", metrics_pass_promtool),
        ("leader_election_fails_over", leader_election_fails_over),
        ("kill_and_restart_mid_flight", kill_and_restart_mid_flight),
        (
            "intelligence_service_and_fallback",
            intelligence_service_and_fallback,
        ),
    ];
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        println!("e2e {name} ...");
        match scenario(&cluster) {
            Ok(()) => println!("e2e {name}: ok ({:.1} s)", started.elapsed().as_secs_f64()),
            Err(e) => {
                println!("e2e {name}: FAILED: {e}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!(
            "e2e: {} failed: {failed:?}; control-plane and operator logs: {}",
            failed.len(),
            cluster.dir().display()
        );
        let mut cluster = cluster;
        println!("e2e: logs kept in {}", cluster.keep_logs().display());
        ExitCode::FAILURE
    }
}
