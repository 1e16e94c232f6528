//! Dependencies failing under a running node: PostgreSQL restarted while jobs run, the SQLite
//! file's directory turned read-only, the data directory's file system full. The node survives
//! each, says what is wrong on `/health`, loses no job and runs none twice, and leaves no
//! partial file.
//!
//! PostgreSQL here is a server of the test's own (initdb on a free port; the shared one on 5432
//! serves the other tests). The read-only and full file systems are tmpfs mounts the test makes
//! when it runs as root (CI does); elsewhere those tests say so and pass without running.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client, get_json, start_with, wait_for};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The directory of PostgreSQL's server programs (Debian's layout), newest version first.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// A PostgreSQL server of this test's own, in a temp directory, on a free port.
struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let bin = postgres_bin().expect("PostgreSQL's server programs (apt install postgresql)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let own = OwnPostgres { bin, dir, port };
        if is_root() {
            // PostgreSQL refuses to run as root: its files and process belong to `postgres`.
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(own.dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        own.run(
            "initdb",
            &[
                "-D",
                &own.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        own.pg_ctl(&["start"]);
        own
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `program` of this PostgreSQL, run as `postgres` when the test is root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let mut command = self.command(program);
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `pg_ctl <action>` on this server, waiting for it to finish.
    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        let mut args = vec!["-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options];
        args.extend_from_slice(action);
        if action == ["stop"] {
            args.extend_from_slice(&["-m", "fast"]);
        }
        self.run("pg_ctl", &args);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn job_spec(steps: u64, seed: u64) -> Value {
    json!({"dataset": "mod-add:11", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
           "batch_size": 16, "steps": steps, "eval_every": 50, "checkpoint_every": 50,
           "variants": 1, "threads": 1, "seed": seed})
}

async fn job(base: &str, id: &str) -> Option<Value> {
    let response = client()
        .get(format!("{base}/jobs/{id}"))
        .send()
        .await
        .ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

/// The node's health report and the state of `dependency` in it.
async fn dependency(base: &str, name: &str) -> (Value, String) {
    let health = get_json(&format!("{base}/health")).await;
    let status = health["dependencies"][name]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (health, status)
}

fn node_config(dir: &Path, database: &str, artifacts: &Path) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\n{database}\n\
             [storage]\nartifacts_dir = \"{}\"\n\
             [training]\nmax_concurrent_jobs = 1\nlease_duration_ms = 4000\nmax_attempts = 10\n\
             [monitoring]\nhealth_check_interval_ms = 500\nhealth_check_timeout_ms = 400\n{}",
            artifacts.display(),
            common::tokens_toml()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_running_jobs_loses_none_and_runs_none_twice() {
    let postgres = OwnPostgres::start();
    let root = tempfile::tempdir().unwrap();
    let config = node_config(
        root.path(),
        &format!("url = \"{}\"", postgres.url()),
        &root.path().join("artifacts"),
    );
    let data = root.path().join("data");
    let (server, _) = start_with(&data, &["--config".as_ref(), config.as_os_str()]);
    let base = server.base.clone();
    let first = common::start_cognate(&base, &job_spec(900, 1)).await;
    let second = common::start_cognate(&base, &job_spec(300, 2)).await;
    common::wait_for_checkpoint(&base, &first, 100).await;

    // Down for a few seconds, then back: the pool's connections are all gone.
    postgres.pg_ctl(&["stop"]);
    wait_for(
        "the database reported down",
        Duration::from_secs(15),
        || async {
            let (health, status) = dependency(&base, "database").await;
            (status == "unhealthy" || status == "degraded").then_some(health)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.pg_ctl(&["start"]);
    wait_for(
        "the database healthy again",
        Duration::from_secs(30),
        || async {
            let (_, status) = dependency(&base, "database").await;
            (status == "healthy").then_some(())
        },
    )
    .await;

    // Both jobs end, each once, with their full event logs.
    for id in [&first, &second] {
        let done = wait_for(
            &format!("job {id} completed"),
            Duration::from_secs(240),
            || async {
                let job = job(&base, id).await?;
                assert_ne!(job["status"], "failed", "{job:#}");
                (job["status"] == "completed").then_some(job)
            },
        )
        .await;
        let events = get_json(&format!("{base}/jobs/{id}/events?since=0&limit=10000")).await;
        let events = events.as_array().unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "gap-free"
        );
        let completions = events
            .iter()
            .filter(|e| e["event"]["type"] == "training_completed")
            .count();
        assert_eq!(completions, 1, "{done:#}");
    }
    let models = get_json(&format!("{base}/models")).await;
    for id in [&first, &second] {
        let registered = models
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["job_id"] == id.as_str())
            .count();
        assert_eq!(registered, 1, "job {id} registered {registered} models");
    }
    assert!(
        server_alive(server),
        "the node is still running after the outage"
    );
}

fn server_alive(mut server: common::Server) -> bool {
    server.child.try_wait().unwrap().is_none()
}

/// A tmpfs of `size` mounted at a new directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root; this check runs in CI, which is root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        if !status.success() {
            eprintln!("SKIPPED: this machine refuses tmpfs mounts even to root");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, option: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{option}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount {option}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A file system under a running SQLite cannot be made read-only (the kernel refuses to remount
/// while files are open for writing), so the directory turns read-only between two runs of the
/// node: the node refuses to start, saying which directory and why, and once it is writable
/// again starts with everything it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_directory_is_refused_with_the_reason_and_nothing_is_lost() {
    let Some(mount) = Tmpfs::mount("64m") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let sqlite = mount.path().join("grokforge.sqlite3");
    let config = node_config(
        root.path(),
        &format!("url = \"sqlite://{}\"", sqlite.display()),
        &root.path().join("artifacts"),
    );
    let data = root.path().join("data");
    let args = ["--config".as_ref(), config.as_os_str()];
    let (server, _) = start_with(&data, &args);
    let id = common::start_cognate(&server.base, &job_spec(100, 3)).await;
    wait_for(
        &format!("job {id} completed"),
        Duration::from_secs(120),
        || async {
            let job = job(&server.base, &id).await?;
            (job["status"] == "completed").then_some(job)
        },
    )
    .await;
    let mut server = server;
    let status = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    drop(server);

    mount.remount("ro");
    let refused = common::grokforge()
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a node that cannot write its database does not start"
    );
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        said.contains("read-only")
            && said.contains(&mount.path().display().to_string().to_lowercase()),
        "the refusal names the directory and the cause:\n{said}"
    );

    mount.remount("rw");
    let (server, _) = start_with(&data, &args);
    let kept = job(&server.base, &id)
        .await
        .expect("the job is still there");
    assert_eq!(kept["status"], "completed");
    let models = get_json(&format!("{}/models", server.base)).await;
    assert_eq!(models.as_array().unwrap().len(), 1, "{models:#}");
    let again = common::start_cognate(&server.base, &job_spec(100, 5)).await;
    wait_for(
        &format!("job {again} completed"),
        Duration::from_secs(120),
        || async {
            let job = job(&server.base, &again).await?;
            (job["status"] == "completed").then_some(job)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_file_system_fails_the_attempt_cleanly_and_health_says_why() {
    let Some(mount) = Tmpfs::mount("3m") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let artifacts = mount.path().join("artifacts");
    let config = node_config(root.path(), "", &artifacts);
    let (server, _) = start_with(
        &root.path().join("data"),
        &["--config".as_ref(), config.as_os_str()],
    );
    let base = server.base.clone();
    let id = common::start_cognate(&base, &job_spec(3000, 6)).await;
    common::wait_for_checkpoint(&base, &id, 50).await;
    // Fill the file system under the running job: its next checkpoint cannot be written.
    let filler = mount.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    let failed = wait_for("the attempt to fail", Duration::from_secs(60), || async {
        let job = job(&base, &id).await?;
        (!job["attempt_errors"].as_array()?.is_empty()).then_some(job)
    })
    .await;
    let said = failed["attempt_errors"].to_string().to_lowercase();
    assert!(
        said.contains("no space"),
        "the failure names the cause: {failed:#}"
    );
    let health = wait_for(
        "the file system reported",
        Duration::from_secs(15),
        || async {
            let health = get_json(&format!("{base}/health")).await;
            let text = health.to_string().to_lowercase();
            text.contains("no space").then_some(health)
        },
    )
    .await;
    assert_ne!(health["status"], "healthy", "{health:#}");
    // The node takes no attempt it could not finish: the job waits, its attempts kept.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = job(&base, &id).await.unwrap();
    assert!(
        waiting["status"] == "queued" || waiting["status"] == "interrupted",
        "{waiting:#}"
    );
    assert_eq!(waiting["attempts"], 1, "{waiting:#}");
    let left: Vec<String> = common::files_under(mount.path())
        .into_iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "partial files left: {left:?}");

    // Space again: the job resumes from its last checkpoint and completes.
    std::fs::remove_file(&filler).unwrap();
    let done = wait_for(
        &format!("job {id} completed"),
        Duration::from_secs(180),
        || async {
            let job = job(&base, &id).await?;
            (job["status"] == "completed").then_some(job)
        },
    )
    .await;
    assert_eq!(done["attempts"], 2, "{done:#}");
    assert!(server_alive(server));
}
