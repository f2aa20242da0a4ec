//! Git output: one commit per generation change, pushed with bounded retries.
//!
//! Why the `git` CLI and not a library: pushing is the hard part — HTTP authentication
//! negotiation, proxies, smart-protocol quirks of every forge, OpenSSH with `known_hosts` — and
//! `git` is the client every forge tests against; `gix` cannot push yet, and `git2` would mean
//! vendoring libgit2, libssh2 and OpenSSL for a weaker SSH story. Plumbing keeps it robust and
//! free of a work tree: a shallow fetch of the branch tip into a throw-away bare repository,
//! `git fast-import` to build the new tree in memory on top of that tip (the generation's
//! directory replaced wholesale), a tree comparison to skip empty commits, and an atomic push
//! that, when the branch moved meanwhile, is redone on the new tip (crates.io's index writer
//! works the same way). Secrets reach git only through the child's environment and are redacted
//! from everything it prints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Attempts at a push before giving up on a branch that keeps moving.
pub const MAX_ATTEMPTS: u32 = 6;
/// Longest a single git command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The ref the new commit is built on locally.
const WORK_REF: &str = "refs/omninode/new";

/// How to authenticate to the remote.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// HTTP(S) basic authentication (a token goes in `password`).
    Basic { username: String, password: String },
    /// SSH with a private key; `known_hosts` pins the server's key.
    Ssh {
        private_key: String,
        known_hosts: Option<String>,
    },
}

impl Credentials {
    fn secrets(&self) -> Vec<String> {
        match self {
            Credentials::Anonymous => Vec::new(),
            Credentials::Basic { password, .. } => vec![password.clone()],
            Credentials::Ssh { private_key, .. } => private_key
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= 8 && !l.starts_with("-----"))
                .map(str::to_string)
                .collect(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Ssh { .. } => f.write_str("Ssh(***)"),
        }
    }
}

/// Where to push.
#[derive(Clone, Debug)]
pub struct Remote {
    pub url: String,
    pub branch: String,
    pub credentials: Credentials,
}

/// One file of the commit.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub data: Vec<u8>,
    pub executable: bool,
}

/// A commit author (also the committer).
#[derive(Clone, Debug)]
pub struct Signature {
    pub name: String,
    pub email: String,
}

/// What one generation contributes: its directory `root`, replaced by exactly `files` (paths
/// relative to the repository root), and tags that must name a commit holding these files.
///
/// The generation gap: files in `user_dirs` belong to the user. Whatever the branch already
/// holds there is kept byte for byte, and the `files` of those directories are only defaults,
/// written where the branch has no file of that path yet.
#[derive(Clone, Debug)]
pub struct Change {
    pub root: String,
    pub files: BTreeMap<String, File>,
    pub user_dirs: BTreeSet<String>,
    pub tags: BTreeSet<String>,
    pub message: String,
    pub author: Signature,
}

/// What happened at the remote.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    /// The commit on the branch that holds the change.
    pub commit: String,
    /// False when the branch already held exactly these files (no commit was made).
    pub pushed: bool,
    pub attempts: u32,
    /// Files of the user's directories kept from the branch although the change has no default
    /// for them (a handler whose operation disappeared): kept, never deleted, and reported.
    pub orphans: Vec<String>,
}

/// A file the branch already holds: its mode and blob, reused as they are.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    mode: String,
    blob: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GitError {
    #[error("authentication to the Git remote failed: {0}")]
    Authentication(String),
    #[error("the Git remote rejected the push: {0}")]
    Rejected(String),
    #[error("the Git remote is unreachable: {0}")]
    Unreachable(String),
    #[error("the branch is busy: {0}")]
    Busy(String),
    #[error("git failed: {0}")]
    Failed(String),
}

impl GitError {
    /// The `Published` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::Authentication(_) => "AuthenticationFailed",
            GitError::Rejected(_) => "RemoteRejected",
            GitError::Unreachable(_) => "RepositoryUnreachable",
            GitError::Busy(_) => "BranchBusy",
            GitError::Failed(_) => "GitFailed",
        }
    }
}

/// Replace every secret in `text` with `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// A failed command's output, as an error of the right kind.
fn classify(output: &str) -> GitError {
    let lower = output.to_ascii_lowercase();
    let message = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect::<Vec<_>>()
        .join("; ");
    let any = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied (publickey",
        "host key verification failed",
        "error: 401",
        "error: 403",
        "invalid username or password",
    ]) {
        GitError::Authentication(message)
    } else if any(&[
        "[remote rejected]",
        "pre-receive hook declined",
        "protected branch",
        "[rejected]",
    ]) {
        GitError::Rejected(message)
    } else if any(&[
        "could not resolve host",
        "connection refused",
        "does not appear to be a git repository",
        "repository not found",
        "' not found",
        "failed to connect",
        "unable to access",
        "could not read from remote repository",
        "timed out",
    ]) {
        GitError::Unreachable(message)
    } else {
        GitError::Failed(message)
    }
}

/// Whether a failed push lost a race with another writer (redo on the new tip).
fn lost_race(output: &str) -> bool {
    output.contains("(fetch first)")
        || output.contains("(non-fast-forward)")
        || output.contains("(stale info)")
        || output.contains("cannot lock ref")
        || output.contains("failed to update ref")
}

/// The `git fast-import` stream of a commit on `parent` replacing `change.root`; `kept` are the
/// user's files on the parent, which take the place of the change's defaults.
fn fast_import_stream(
    change: &Change,
    kept: &BTreeMap<String, Kept>,
    parent: Option<&str>,
    when: i64,
) -> Vec<u8> {
    let mut s = Vec::new();
    let sig = format!(
        "{} <{}> {when} +0000",
        change.author.name.replace(['<', '>', '\n'], ""),
        change.author.email.replace(['<', '>', '\n'], "")
    );
    let data = |s: &mut Vec<u8>, bytes: &[u8]| {
        s.extend_from_slice(format!("data {}\n", bytes.len()).as_bytes());
        s.extend_from_slice(bytes);
        s.push(b'\n');
    };
    // `reset` first: a new branch starts from nothing, not from an earlier attempt's commit.
    s.extend_from_slice(
        format!("reset {WORK_REF}\ncommit {WORK_REF}\nauthor {sig}\ncommitter {sig}\n").as_bytes(),
    );
    data(&mut s, change.message.as_bytes());
    if let Some(p) = parent {
        s.extend_from_slice(format!("from {p}\n").as_bytes());
    }
    if !change.root.is_empty() {
        s.extend_from_slice(format!("D {}\n", quote(&change.root)).as_bytes());
    }
    for (path, file) in &change.files {
        if kept.contains_key(path) {
            continue;
        }
        let mode = if file.executable { "100755" } else { "100644" };
        s.extend_from_slice(format!("M {mode} inline {}\n", quote(path)).as_bytes());
        data(&mut s, &file.data);
    }
    for (path, k) in kept {
        s.extend_from_slice(format!("M {} {} {}\n", k.mode, k.blob, quote(path)).as_bytes());
    }
    s.extend_from_slice(b"done\n");
    s
}

/// A fast-import path, C-quoted when it needs to be.
fn quote(path: &str) -> String {
    if path
        .chars()
        .any(|c| c == '"' || c == '\\' || c == '\n' || c == ' ')
    {
        format!(
            "\"{}\"",
            path.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        )
    } else {
        path.to_string()
    }
}

/// A throw-away bare repository and the environment every git command in it gets.
struct Repo {
    dir: std::path::PathBuf,
    env: Vec<(String, String)>,
    secrets: Vec<String>,
}

struct Run {
    ok: bool,
    stdout: String,
    /// stdout and stderr together, redacted.
    text: String,
}

impl Repo {
    async fn create(
        scratch: &Path,
        remote: &Remote,
    ) -> Result<(tempfile::TempDir, Repo), GitError> {
        std::fs::create_dir_all(scratch).map_err(|e| GitError::Failed(e.to_string()))?;
        let tmp = tempfile::Builder::new()
            .prefix("omninode-git-")
            .tempdir_in(scratch)
            .map_err(|e| GitError::Failed(format!("scratch directory: {e}")))?;
        let home = tmp.path().to_path_buf();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), home.display().to_string()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("LC_ALL".into(), "C".into()),
        ];
        // Configuration through the environment, so that nothing of it lands on disk.
        let mut config: Vec<(&str, String)> = vec![("core.askPass", String::new())];
        match &remote.credentials {
            Credentials::Anonymous => {}
            Credentials::Basic { username, password } => {
                env.push(("OMNINODE_GIT_USERNAME".into(), username.clone()));
                env.push(("OMNINODE_GIT_PASSWORD".into(), password.clone()));
                config.push(("credential.helper", String::new()));
                config.push((
                    "credential.helper",
                    "!f() { test \"$1\" = get || exit 0; echo \"username=$OMNINODE_GIT_USERNAME\"; echo \"password=$OMNINODE_GIT_PASSWORD\"; }; f".into(),
                ));
            }
            Credentials::Ssh {
                private_key,
                known_hosts,
            } => {
                let key = home.join("id");
                let hosts = home.join("known_hosts");
                let mut key_text = private_key.clone();
                if !key_text.ends_with('\n') {
                    key_text.push('\n');
                }
                write_private(&key, &key_text)?;
                write_private(&hosts, known_hosts.as_deref().unwrap_or_default())?;
                env.push((
                    "GIT_SSH_COMMAND".into(),
                    format!(
                        "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile='{}' -o StrictHostKeyChecking=yes",
                        key.display(),
                        hosts.display()
                    ),
                ));
            }
        }
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
        for (i, (k, v)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), k.to_string()));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
        }
        let mut secrets = remote.credentials.secrets();
        if let Some(password) = url_password(&remote.url) {
            secrets.push(password);
        }
        let repo = Repo {
            dir: home.join("repo.git"),
            env,
            secrets,
        };
        let init = repo
            .git(
                &["init", "-q", "--bare", &repo.dir.display().to_string()],
                None,
            )
            .await?;
        if !init.ok {
            return Err(GitError::Failed(init.text));
        }
        Ok((tmp, repo))
    }

    async fn git(&self, args: &[&str], stdin: Option<Vec<u8>>) -> Result<Run, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        if self.dir.exists() {
            cmd.arg("--git-dir").arg(&self.dir);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| GitError::Failed(format!("cannot run git: {e}")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(&input)
                .await
                .map_err(|e| GitError::Failed(format!("writing to git: {e}")))?;
        }
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| GitError::Unreachable(format!("git {} timed out", args[0])))?
            .map_err(|e| GitError::Failed(e.to_string()))?;
        let stdout = redact(&String::from_utf8_lossy(&out.stdout), &self.secrets);
        let stderr = redact(&String::from_utf8_lossy(&out.stderr), &self.secrets);
        Ok(Run {
            ok: out.status.success(),
            text: format!("{stdout}{stderr}"),
            stdout,
        })
    }

    /// Run git; its stdout, or the classified failure.
    async fn ok(&self, args: &[&str]) -> Result<String, GitError> {
        let run = self.git(args, None).await?;
        if run.ok {
            Ok(run.stdout)
        } else {
            Err(classify(&run.text))
        }
    }

    /// The branch tip (fetched shallow), or `None` when the branch does not exist yet.
    async fn fetch_tip(&self, remote: &Remote) -> Result<Option<String>, GitError> {
        let branch = format!("refs/heads/{}", remote.branch);
        let fetch = self
            .git(
                &[
                    "fetch",
                    "-q",
                    "--depth=1",
                    "--no-tags",
                    &remote.url,
                    &branch,
                ],
                None,
            )
            .await?;
        if !fetch.ok {
            if fetch.text.contains("couldn't find remote ref") {
                return Ok(None);
            }
            return Err(classify(&fetch.text));
        }
        self.rev_parse("FETCH_HEAD").await.map(Some)
    }

    async fn remote_tags(
        &self,
        remote: &Remote,
        tags: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, GitError> {
        if tags.is_empty() {
            return Ok(BTreeSet::new());
        }
        let patterns: Vec<String> = tags.iter().map(|t| format!("refs/tags/{t}")).collect();
        let mut args = vec!["ls-remote", "--tags", remote.url.as_str()];
        args.extend(patterns.iter().map(String::as_str));
        Ok(self
            .ok(&args)
            .await?
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.strip_prefix("refs/tags/"))
            .map(str::to_string)
            .collect())
    }

    async fn rev_parse(&self, what: &str) -> Result<String, GitError> {
        let run = self
            .git(&["rev-parse", "--verify", "-q", what], None)
            .await?;
        if !run.ok {
            return Err(GitError::Failed(format!("rev-parse {what}: {}", run.text)));
        }
        Ok(run.stdout.trim().to_string())
    }

    /// The user's files on `tip`: every blob below `change.user_dirs`.
    async fn user_files(
        &self,
        change: &Change,
        tip: Option<&str>,
    ) -> Result<BTreeMap<String, Kept>, GitError> {
        let mut kept = BTreeMap::new();
        let Some(tip) = tip else { return Ok(kept) };
        if change.user_dirs.is_empty() {
            return Ok(kept);
        }
        let mut args = vec!["ls-tree", "-r", "-z", "--full-tree", tip, "--"];
        args.extend(change.user_dirs.iter().map(String::as_str));
        let run = self.git(&args, None).await?;
        if !run.ok {
            return Err(GitError::Failed(format!("ls-tree: {}", run.text)));
        }
        for entry in run.stdout.split('\0').filter(|e| !e.is_empty()) {
            // `<mode> SP <type> SP <object> TAB <path>`
            let Some((meta, path)) = entry.split_once('\t') else {
                continue;
            };
            let mut meta = meta.split(' ');
            if let (Some(mode), Some("blob"), Some(blob)) = (meta.next(), meta.next(), meta.next())
            {
                kept.insert(
                    path.to_string(),
                    Kept {
                        mode: mode.to_string(),
                        blob: blob.to_string(),
                    },
                );
            }
        }
        Ok(kept)
    }

    async fn build(
        &self,
        change: &Change,
        kept: &BTreeMap<String, Kept>,
        parent: Option<&str>,
    ) -> Result<String, GitError> {
        let when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let stream = fast_import_stream(change, kept, parent, when);
        let run = self
            .git(
                &["fast-import", "--quiet", "--force", "--done"],
                Some(stream),
            )
            .await?;
        if !run.ok {
            return Err(GitError::Failed(format!("fast-import: {}", run.text)));
        }
        self.rev_parse(WORK_REF).await
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), GitError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| GitError::Failed(format!("writing credentials: {e}")))?;
    f.write_all(text.as_bytes())
        .map_err(|e| GitError::Failed(format!("writing credentials: {e}")))
}

/// The password of a URL's userinfo (`https://user:pw@host/…`), to redact it.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p.to_string())
}

/// Commit `change` on `remote.branch` and push it, redoing it on the new tip when another
/// writer got there first. `scratch` is a writable directory for the throw-away repository.
pub async fn publish(
    remote: &Remote,
    change: &Change,
    scratch: &Path,
) -> Result<Published, GitError> {
    let (_tmp, repo) = Repo::create(scratch, remote).await?;
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let tip = repo.fetch_tip(remote).await?;
        let existing = repo.remote_tags(remote, &change.tags).await?;
        let missing: Vec<&String> = change.tags.difference(&existing).collect();
        let kept = repo.user_files(change, tip.as_deref()).await?;
        let orphans: Vec<String> = kept
            .keys()
            .filter(|p| !change.files.contains_key(*p))
            .cloned()
            .collect();
        let commit = repo.build(change, &kept, tip.as_deref()).await?;
        let unchanged = match &tip {
            Some(tip) => {
                repo.rev_parse(&format!("{tip}^{{tree}}")).await?
                    == repo.rev_parse(&format!("{commit}^{{tree}}")).await?
            }
            None => false,
        };
        let (target, branch_update) = match (&tip, unchanged) {
            (Some(tip), true) => (tip.clone(), false),
            _ => (commit.clone(), true),
        };
        if !branch_update && missing.is_empty() {
            return Ok(Published {
                commit: target,
                pushed: false,
                attempts: attempt,
                orphans,
            });
        }
        let mut refspecs = Vec::new();
        if branch_update {
            refspecs.push(format!("{target}:refs/heads/{}", remote.branch));
        }
        refspecs.extend(missing.iter().map(|t| format!("{target}:refs/tags/{t}")));
        let mut args = vec!["push", "--atomic", "--porcelain", remote.url.as_str()];
        args.extend(refspecs.iter().map(String::as_str));
        let push = repo.git(&args, None).await?;
        if push.ok {
            return Ok(Published {
                commit: target,
                pushed: branch_update,
                attempts: attempt,
                orphans,
            });
        }
        if !lost_race(&push.text) {
            return Err(classify(&push.text));
        }
        last = push.text;
        // Someone else pushed: back off a little (more each time) and redo on their tip.
        let jitter = u64::from(std::process::id() % 50);
        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt) + jitter)).await;
    }
    Err(GitError::Busy(format!(
        "branch {} kept moving; gave up after {MAX_ATTEMPTS} attempts: {}",
        remote.branch,
        last.lines().last().unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        Change {
            root: "gen/ns/orders".into(),
            files: BTreeMap::from([
                (
                    "gen/ns/orders/nodes/a/start_node.py".into(),
                    File {
                        data: b"print('hi')\n".to_vec(),
                        executable: true,
                    },
                ),
                (
                    "gen/ns/orders/manifests/a.yaml".into(),
                    File {
                        data: b"kind: GeneratedNode\n".to_vec(),
                        executable: false,
                    },
                ),
            ]),
            user_dirs: BTreeSet::from(["gen/ns/orders/nodes/a/pkg/handlers".into()]),
            tags: BTreeSet::new(),
            message: "omninode: ns/orders\n".into(),
            author: Signature {
                name: "Omni <Node>".into(),
                email: "bot@example.com".into(),
            },
        }
    }

    #[test]
    fn fast_import_replaces_the_generation_directory() {
        let s = String::from_utf8(fast_import_stream(
            &change(),
            &BTreeMap::new(),
            Some("abc"),
            7,
        ))
        .unwrap();
        assert!(s.starts_with("reset refs/omninode/new\ncommit refs/omninode/new\nauthor Omni Node <bot@example.com> 7 +0000\n"));
        assert!(s.contains("from abc\nD gen/ns/orders\n"));
        assert!(s.contains(
            "M 100755 inline gen/ns/orders/nodes/a/start_node.py\ndata 12\nprint('hi')\n"
        ));
        assert!(s.contains("M 100644 inline gen/ns/orders/manifests/a.yaml\n"));
        assert!(s.ends_with("done\n"));
    }

    #[test]
    fn the_users_files_on_the_branch_replace_the_defaults() {
        let mut change = change();
        let handler = "gen/ns/orders/nodes/a/pkg/handlers/handler_x.py".to_string();
        let orphan = "gen/ns/orders/nodes/a/pkg/handlers/handler_gone.py".to_string();
        change.files.insert(
            handler.clone(),
            File {
                data: b"default\n".to_vec(),
                executable: false,
            },
        );
        let blob = |b: &str| Kept {
            mode: "100644".into(),
            blob: b.repeat(40),
        };
        let kept = BTreeMap::from([(handler.clone(), blob("a")), (orphan.clone(), blob("b"))]);
        let s = String::from_utf8(fast_import_stream(&change, &kept, Some("abc"), 7)).unwrap();
        assert!(!s.contains("default"), "{s}");
        assert!(s.contains(&format!("M 100644 {} {handler}\n", "a".repeat(40))));
        assert!(s.contains(&format!("M 100644 {} {orphan}\n", "b".repeat(40))));
        // The delete of the generation directory comes before the kept files.
        assert!(s.find("D gen/ns/orders\n") < s.find(&handler));
    }

    #[test]
    fn errors_are_classified_for_the_published_condition() {
        let auth = "fatal: Authentication failed for 'http://127.0.0.1:1/r.git/'";
        assert_eq!(classify(auth).reason(), "AuthenticationFailed");
        let hook = " ! [remote rejected] main -> main (pre-receive hook declined)";
        assert_eq!(classify(hook).reason(), "RemoteRejected");
        let gone = "fatal: '/nope' does not appear to be a git repository";
        assert_eq!(classify(gone).reason(), "RepositoryUnreachable");
        assert!(lost_race("!\trefs/heads/main\t[rejected] (fetch first)"));
        assert!(!lost_race(hook));
    }

    #[test]
    fn secrets_never_survive_redaction_or_debug() {
        let creds = Credentials::Basic {
            username: "bot".into(),
            password: "s3cr3t-token".into(),
        };
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert_eq!(redact("x s3cr3t-token y", &creds.secrets()), "x *** y");
        assert_eq!(
            url_password("https://bot:pw123@host/r.git").as_deref(),
            Some("pw123")
        );
        assert_eq!(url_password("https://host/r.git"), None);
    }
}
