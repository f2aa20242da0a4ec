//! The Git output against real Git servers on 127.0.0.1: `git http-backend` behind basic
//! authentication, and `git daemon`. Generations are made by the real pipeline from the
//! examples; what landed is read back with the real `git`.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use omninode_operator::api::{GitOutput, NodeGeneration};
use omninode_operator::codegen::{self, Identity};
use omninode_operator::manifest::{Entry, read_input};
use omninode_operator::pipeline::NodeOutcome;
use omninode_operator::publish::git::{self, Credentials, GitError, Remote};
use omninode_operator::publish::git_tree;
use omninode_operator::render::RenderedShared;
use omninode_operator::render::Renderer;
use support::git_server::{Daemon, HttpServer, Repos, SshServer};

const USER: &str = "omninode-bot";
const PASSWORD: &str = "hunter2-very-secret-token";

/// A NodeGeneration from an example, renamed, and its nodes from the real pipeline.
async fn generation(
    file: &str,
    name: &str,
) -> (NodeGeneration, Vec<NodeOutcome>, Option<RenderedShared>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let bytes = std::fs::read(&path).expect("example");
    let entries = read_input(&path.display().to_string(), &bytes);
    let Some(Entry::Generation { spec, prd, .. }) = entries.into_iter().next() else {
        panic!("{file} holds no NodeGeneration");
    };
    let prd = prd.expect("a PRD");
    let renderer = Renderer::embedded().expect("templates");
    let outcome = codegen::run(
        &renderer,
        &Identity::offline("team-a", name),
        &spec,
        &prd,
        None,
    )
    .await
    .expect("generation");
    assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
    let mut ng = NodeGeneration::new(name, *spec);
    ng.metadata.namespace = Some("team-a".into());
    ng.metadata.uid = Some(format!("uid-of-{name}"));
    ng.metadata.generation = Some(3);
    (ng, outcome.nodes, outcome.shared)
}

fn output(url: &str) -> GitOutput {
    GitOutput {
        repository: url.to_string(),
        branch: "main".into(),
        path: "clusters/dev".into(),
        secret_ref: None,
        author: None,
        message_template: None,
    }
}

/// The change example `file`, applied as NodeGeneration `name`, makes on `url`'s main branch.
async fn change_for(file: &str, name: &str, url: &str) -> git::Change {
    let (ng, nodes, shared) = generation(file, name).await;
    git_tree::change(&ng, &output(url), &nodes, shared.as_ref()).unwrap()
}

fn remote(url: &str, credentials: Credentials) -> Remote {
    Remote {
        url: url.to_string(),
        branch: "main".into(),
        credentials,
    }
}

/// A bare repository `repo` behind the authenticated HTTP server, and a scratch directory.
struct Fixture {
    repos: Repos,
    url: String,
    scratch: tempfile::TempDir,
    _server: HttpServer,
}

async fn fixture(repo: &str) -> Fixture {
    let repos = Repos::new();
    repos.create(repo);
    let server = HttpServer::start(&repos.root, USER, PASSWORD).await;
    Fixture {
        url: server.url(repo),
        repos,
        scratch: tempfile::tempdir().unwrap(),
        _server: server,
    }
}

async fn anonymous(
    url: &str,
    change: &git::Change,
    scratch: &Path,
) -> Result<git::Published, GitError> {
    git::publish(&remote(url, Credentials::Anonymous), change, scratch).await
}

fn basic() -> Credentials {
    Credentials::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

#[tokio::test]
async fn a_generation_pushes_one_commit_then_nothing_when_unchanged() {
    let f = fixture("nodes").await;
    let (repos, url, scratch) = (&f.repos, f.url.clone(), &f.scratch);
    let (ng, nodes, shared) = generation("system-fraud-detection.yaml", "fraud-detection").await;
    let change = git_tree::change(&ng, &output(&url), &nodes, shared.as_ref()).unwrap();

    let first = git::publish(&remote(&url, basic()), &change, scratch.path())
        .await
        .unwrap();
    assert!(first.pushed);
    let head = repos.in_repo("nodes", &["rev-parse", "main"]).unwrap();
    assert_eq!(head.trim(), first.commit);
    assert_eq!(
        repos
            .in_repo("nodes", &["rev-list", "--count", "main"])
            .unwrap()
            .trim(),
        "1"
    );

    // The tree: exactly the files of the change.
    let tree = repos.in_repo("nodes", &["ls-tree", "-r", "main"]).unwrap();
    let paths: BTreeSet<String> = tree
        .lines()
        .filter_map(|l| l.split('\t').nth(1).map(str::to_string))
        .collect();
    let expected: BTreeSet<String> = change.files.keys().cloned().collect();
    assert_eq!(paths, expected);
    assert_eq!(nodes.len(), 4);
    for node in &nodes {
        let dir = format!("clusters/dev/team-a/fraud-detection/nodes/{}", node.name);
        let start = tree
            .lines()
            .find(|l| l.ends_with("/__main__.py") && l.contains(&dir))
            .unwrap_or_else(|| panic!("no __main__.py for {}", node.name));
        assert!(start.starts_with("100644 "), "{start}");
        let manifest = repos
            .in_repo(
                "nodes",
                &[
                    "show",
                    &format!(
                        "main:clusters/dev/team-a/fraud-detection/manifests/{}.yaml",
                        node.name
                    ),
                ],
            )
            .unwrap();
        let gn: serde_json::Value = serde_norway::from_str(&manifest).unwrap();
        assert_eq!(gn["kind"], "GeneratedNode");
        assert_eq!(gn["spec"]["source"]["git"]["repository"], url.as_str());
        assert_eq!(gn["spec"]["source"]["git"]["path"], dir.as_str());
        // The system's shared models are committed once; each node that imports them names
        // their package, which is in the same commit.
        let shared_path = gn["spec"]["source"]["git"]["sharedPath"].as_str();
        assert_eq!(
            shared_path,
            Some(
                "clusters/dev/team-a/fraud-detection/shared/data_fraud_detection_shared/data_fraud_detection_shared"
            ),
        );
        assert!(paths.contains(&format!("{}/__init__.py", shared_path.unwrap())));
        assert_eq!(
            gn["spec"]["contentHash"],
            node.rendered.content_hash.as_str()
        );
        assert!(gn["metadata"].get("namespace").is_none());
        // The revision is a tag naming this very commit.
        let tag = gn["spec"]["source"]["git"]["revision"].as_str().unwrap();
        let tagged = repos
            .in_repo("nodes", &["rev-parse", &format!("refs/tags/{tag}")])
            .unwrap();
        assert_eq!(tagged.trim(), first.commit);
    }

    // The message names the NodeGeneration, its UID and every content hash.
    let message = repos
        .in_repo("nodes", &["log", "-1", "--format=%B%n%an <%ae>", "main"])
        .unwrap();
    assert!(
        message.starts_with("omninode: team-a/fraud-detection generation 3"),
        "{message}"
    );
    assert!(message.contains("UID: uid-of-fraud-detection"), "{message}");
    for node in &nodes {
        assert!(message.contains(&node.rendered.content_hash), "{message}");
    }
    assert!(message.contains("omninode-operator <omninode-operator@noreply.omninode.ai>"));

    // The same spec again: nothing pushed, the branch unmoved.
    let again = git::publish(&remote(&url, basic()), &change, scratch.path())
        .await
        .unwrap();
    assert!(!again.pushed);
    assert_eq!(again.commit, first.commit);
    assert_eq!(
        repos
            .in_repo("nodes", &["rev-list", "--count", "main"])
            .unwrap()
            .trim(),
        "1"
    );
    // The scratch repositories are gone.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn concurrent_generations_on_one_branch_all_land() {
    let f = fixture("shared").await;
    let (repos, url) = (&f.repos, f.url.clone());
    let examples = [
        ("effect-email-notifier.yaml", "email"),
        ("compute-price-calculator.yaml", "prices"),
        ("reducer-inventory-ledger.yaml", "ledger"),
        ("orchestrator-order-workflow.yaml", "orders"),
    ];
    let mut changes = Vec::new();
    for (file, name) in examples {
        changes.push(change_for(file, name, &url).await);
    }
    // One scratch directory each: as separate operator processes would.
    let scratches: Vec<_> = changes
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let target = remote(&url, basic());
    let results = futures::future::join_all(
        changes
            .iter()
            .zip(&scratches)
            .map(|(c, s)| git::publish(&target, c, s.path())),
    )
    .await;
    let mut retried = 0;
    for r in &results {
        let r = r.as_ref().expect("every push lands");
        assert!(r.pushed);
        retried += usize::from(r.attempts > 1);
    }
    assert_eq!(
        repos
            .in_repo("shared", &["rev-list", "--count", "main"])
            .unwrap()
            .trim(),
        examples.len().to_string()
    );
    let tree = repos
        .in_repo("shared", &["ls-tree", "-r", "--name-only", "main"])
        .unwrap();
    for change in &changes {
        for path in change.files.keys() {
            assert!(tree.lines().any(|l| l == path), "{path} lost");
        }
    }
    println!(
        "{} concurrent generations landed; {retried} redone on a moved tip",
        changes.len()
    );
}

#[tokio::test]
async fn wrong_credentials_fail_with_authentication_failed_and_never_show_the_secret() {
    let f = fixture("private").await;
    let (repos, url, scratch) = (&f.repos, f.url.clone(), &f.scratch);
    let change = change_for("effect-email-notifier.yaml", "email", &url).await;
    let wrong = Credentials::Basic {
        username: USER.into(),
        password: "wrong-password-that-must-not-leak".into(),
    };
    let err = git::publish(&remote(&url, wrong), &change, scratch.path())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Authentication(_)), "{err:?}");
    assert_eq!(err.reason(), "AuthenticationFailed");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-password-that-must-not-leak"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    // No credentials at all: the same reason, no prompt hanging.
    let err = anonymous(&url, &change, scratch.path()).await.unwrap_err();
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    assert!(
        repos
            .in_repo("private", &["rev-parse", "--verify", "-q", "main"])
            .is_err()
    );
}

#[tokio::test]
async fn a_secret_in_the_url_is_redacted_and_unknown_repositories_are_unreachable() {
    let f = fixture("present").await;
    let scratch = &f.scratch;
    let url = f
        .url
        .replace("present", "missing")
        .replace("http://", &format!("http://{USER}:{PASSWORD}@"));
    let change = change_for("effect-email-notifier.yaml", "email", &url).await;
    let err = anonymous(&url, &change, scratch.path()).await.unwrap_err();
    assert_eq!(err.reason(), "RepositoryUnreachable", "{err}");
    assert!(!format!("{err}").contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn git_daemon_anonymous_push_and_file_urls_work_too() {
    let repos = Repos::new();
    repos.create("anon");
    repos.create("local");
    let daemon = Daemon::start(&repos.root).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (ng, nodes, shared) = generation("compute-document-parser.yaml", "parser").await;
    for url in [
        daemon.url("anon"),
        format!("file://{}", repos.root.join("local.git").display()),
    ] {
        let change = git_tree::change(&ng, &output(&url), &nodes, shared.as_ref()).unwrap();
        let published = anonymous(&url, &change, scratch.path()).await.unwrap();
        assert!(published.pushed, "{url}");
    }
    assert!(repos.in_repo("anon", &["rev-parse", "main"]).is_ok());
    assert!(repos.in_repo("local", &["rev-parse", "main"]).is_ok());
}

#[tokio::test]
async fn a_message_template_is_rendered_and_a_broken_one_is_refused() {
    let (ng, nodes, shared) = generation("system-fraud-detection.yaml", "fraud-detection").await;
    let mut out = output("file:///nowhere.git");
    out.message_template = Some(
        "codegen({{ name }}): {{ nodes | length }} nodes\n\n{% for n in nodes %}{{ n.name }} q={{ n.quality }}\n{% endfor %}"
            .into(),
    );
    let change = git_tree::change(&ng, &out, &nodes, shared.as_ref()).unwrap();
    assert!(
        change
            .message
            .starts_with("codegen(fraud-detection): 4 nodes\n\n"),
        "{}",
        change.message
    );
    assert_eq!(
        change.message.lines().filter(|l| l.contains(" q=")).count(),
        4
    );
    out.message_template = Some("{{ no_such_field }}".into());
    let err = git_tree::change(&ng, &out, &nodes, shared.as_ref()).unwrap_err();
    assert!(err.to_string().contains("messageTemplate"), "{err}");
    out.message_template = Some("{% for %}".into());
    assert!(git_tree::change(&ng, &out, &nodes, shared.as_ref()).is_err());
}

#[tokio::test]
async fn ssh_with_a_key_pushes_and_an_unknown_key_or_host_is_refused() {
    let repos = Repos::new();
    repos.create("over-ssh");
    let Some(ssh) = SshServer::start(&repos.root).unwrap() else {
        assert!(
            std::env::var("CI").is_err(),
            "SSHD_ROOT is unset; scripts/test-all.sh unpacks openssh-server for this test"
        );
        eprintln!("skipped: SSHD_ROOT unset (scripts/test-all.sh unpacks openssh-server)");
        return;
    };
    let url = ssh.url(&repos.root, "over-ssh");
    let scratch = tempfile::tempdir().unwrap();
    let change = change_for("effect-postgres-writer.yaml", "writer", &url).await;
    let key = |private_key: &str, known_hosts: Option<&str>| {
        remote(
            &url,
            Credentials::Ssh {
                private_key: private_key.to_string(),
                known_hosts: known_hosts.map(str::to_string),
            },
        )
    };

    let published = git::publish(
        &key(&ssh.private_key, Some(&ssh.known_hosts)),
        &change,
        scratch.path(),
    )
    .await
    .unwrap();
    assert!(published.pushed);
    let head = repos.in_repo("over-ssh", &["rev-parse", "main"]).unwrap();
    assert_eq!(head.trim(), published.commit);

    // A key the server does not know, and a server whose key is not pinned.
    let other = tempfile::tempdir().unwrap();
    let path = other.path().join("k");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let stranger = std::fs::read_to_string(&path).unwrap();
    for (remote, secret) in [
        (key(&stranger, Some(&ssh.known_hosts)), &stranger),
        (key(&ssh.private_key, None), &ssh.private_key),
    ] {
        let err = git::publish(&remote, &change, scratch.path())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
        let text = format!("{err} {err:?} {remote:?}");
        for line in secret.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "key material in {text}");
        }
    }
}

#[tokio::test]
async fn a_push_refused_by_a_hook_is_remote_rejected() {
    let repos = Repos::new();
    let dir = repos.create("guarded");
    let hook = dir.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'branch main is protected' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = format!("file://{}", dir.display());
    let scratch = tempfile::tempdir().unwrap();
    let change = change_for("effect-email-notifier.yaml", "email", &url).await;
    let err = anonymous(&url, &change, scratch.path()).await.unwrap_err();
    assert_eq!(err.reason(), "RemoteRejected", "{err}");
    assert!(err.to_string().contains("protected"), "{err}");
}
