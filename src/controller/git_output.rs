//! A NodeGeneration's Git output from the controller's side: credentials from the Secret it
//! names, the commit and push (`publish::git`), and what the `Published` condition says.
//! Nothing here ever logs or reports a credential: errors from git come back redacted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::{Context, Error};
use crate::api::{GitOutput, GitOutputStatus, NodeGeneration};
use crate::manifest::Rejected;
use crate::pipeline::NodeOutcome;
use crate::publish::git::{self, Credentials, GitError, Remote};
use crate::publish::git_tree;
use crate::render::RenderedShared;

/// The change landed (or was already there).
pub struct Landed {
    pub status: GitOutputStatus,
    /// `Pushed` or `NoChanges`.
    pub reason: &'static str,
    pub message: String,
    /// The user's files kept on the branch that no operation routes to any more.
    pub orphans: Vec<String>,
}

/// What the `Published` message adds about kept handlers whose operation is gone.
fn orphan_note(orphans: &[String]) -> String {
    if orphans.is_empty() {
        return String::new();
    }
    format!(
        "; kept {} handler module(s) whose operation is no longer in the PRD (yours, never deleted): {}",
        orphans.len(),
        orphans.join(", ")
    )
}

/// Why not, and when to try again (`None`: only a spec change helps).
pub struct NotLanded {
    pub rejected: Rejected,
    pub retry: Option<Duration>,
}

fn not_landed(reason: &str, message: String, retry: Option<Duration>) -> NotLanded {
    NotLanded {
        rejected: Rejected {
            reason: reason.to_string(),
            message,
        },
        retry,
    }
}

/// Commit the generation's nodes and manifests and push them.
pub async fn publish(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    output: &GitOutput,
    nodes: &[NodeOutcome],
    shared: Option<&RenderedShared>,
) -> Result<Result<Landed, NotLanded>, Error> {
    let credentials = match credentials(ctx, ns, output).await? {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let change = match git_tree::change(ng, output, nodes, shared) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Err(not_landed(
                "InvalidMessageTemplate",
                e.to_string(),
                None,
            )));
        }
    };
    let remote = Remote {
        url: output.repository.clone(),
        branch: output.branch.clone(),
        credentials,
    };
    let status = |commit: &str| GitOutputStatus {
        repository: output.repository.clone(),
        branch: output.branch.clone(),
        path: change.root.clone(),
        commit: commit.to_string(),
    };
    // One push at a time per branch from this process: its own generations never race.
    let lane = branch_lane(&output.repository, &output.branch);
    let published = {
        let _turn = lane.lock().await;
        git::publish(&remote, &change, &ctx.git_scratch).await
    };
    match published {
        Ok(p) if p.pushed => Ok(Ok(Landed {
            reason: "Pushed",
            message: format!(
                "commit {} pushed to {} of {} ({} attempt(s)); manifests in {}/manifests{}",
                p.commit,
                output.branch,
                output.repository,
                p.attempts,
                change.root,
                orphan_note(&p.orphans)
            ),
            status: status(&p.commit),
            orphans: p.orphans,
        })),
        Ok(p) => Ok(Ok(Landed {
            reason: "NoChanges",
            message: format!(
                "{} of {} already holds these files at commit {}{}",
                output.branch,
                output.repository,
                p.commit,
                orphan_note(&p.orphans)
            ),
            status: status(&p.commit),
            orphans: p.orphans,
        })),
        Err(e) => {
            tracing::warn!(reason = e.reason(), error = %e, "git output failed");
            let retry = match e {
                // A fixed Secret or a lifted branch protection does not change the spec: look
                // again now and then.
                GitError::Authentication(_) | GitError::Rejected(_) => Duration::from_secs(300),
                GitError::Unreachable(_) | GitError::Failed(_) => Duration::from_secs(30),
                GitError::Busy(_) => Duration::from_secs(5),
            };
            Ok(Err(not_landed(e.reason(), e.to_string(), Some(retry))))
        }
    }
}

/// A lock per (repository, branch).
type Lanes = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// The lock of one repository branch.
fn branch_lane(repository: &str, branch: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LANES: OnceLock<Lanes> = OnceLock::new();
    let lanes = LANES.get_or_init(Default::default);
    let mut lanes = lanes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    lanes
        .entry((repository.to_string(), branch.to_string()))
        .or_default()
        .clone()
}

/// Credentials from `secretRef`: `username`/`password`, `token` (with an optional
/// `username`), or `ssh-privatekey` with `known_hosts`.
async fn credentials(
    ctx: &Context,
    ns: &str,
    output: &GitOutput,
) -> Result<Result<Credentials, NotLanded>, Error> {
    let Some(secret_ref) = &output.secret_ref else {
        return Ok(Ok(Credentials::Anonymous));
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let retry = Some(Duration::from_secs(60));
    let secret = match api.get_opt(&secret_ref.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Ok(Err(not_landed(
                "GitSecretNotFound",
                format!(
                    "Secret {} (spec.output.git.secretRef) does not exist",
                    secret_ref.name
                ),
                retry,
            )));
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Ok(Err(not_landed(
                "GitSecretForbidden",
                format!(
                    "the operator may not read Secret {}; list it in the chart value git.secretNames",
                    secret_ref.name
                ),
                retry,
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let data = secret.data.unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .map(|v| {
                String::from_utf8_lossy(&v.0)
                    .trim_end_matches('\n')
                    .to_string()
            })
            .filter(|v| !v.is_empty())
    };
    let credentials = if let Some(private_key) = get("ssh-privatekey") {
        Credentials::Ssh {
            private_key,
            known_hosts: get("known_hosts"),
        }
    } else if let Some(token) = get("token") {
        Credentials::Basic {
            username: get("username").unwrap_or_else(|| "git".into()),
            password: token,
        }
    } else if let (Some(username), Some(password)) = (get("username"), get("password")) {
        Credentials::Basic { username, password }
    } else {
        return Ok(Err(not_landed(
            "InvalidGitSecret",
            format!(
                "Secret {} holds none of username+password, token, ssh-privatekey",
                secret_ref.name
            ),
            retry,
        )));
    };
    Ok(Ok(credentials))
}
