//! A service binary of this build run as its own process, configured by environment as in
//! production (`SPOOL_LISTEN=127.0.0.1:0`; the bound port is read from /proc).
//!
//! Every child process of the fixtures (and of the benchmark) is started with
//! [`tied_command`] and [`spawn_tied`], so that it dies with the process that started it,
//! even when that one is killed with SIGKILL: no `nats-server` or service is left behind.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{eventually, service_binary};

/// util-linux's `setpriv`, when it is here and supports `--pdeathsig` (checked once).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let path = Some(PathBuf::from("/usr/bin/setpriv"))
                .filter(|p| p.is_file())
                .or_else(|| in_path(OsStr::new("setpriv")))?;
            // `setpriv --pdeathsig KILL -- setpriv --version`: the option is understood and
            // the exec works (util-linux 2.33+).
            let works = Command::new(&path)
                .args(["--pdeathsig", "KILL", "--"])
                .arg(&path)
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            works.then_some(path)
        })
        .as_deref()
}

/// `name` looked up in `PATH` (a name with a `/` is returned as it is).
fn in_path(name: &OsStr) -> Option<PathBuf> {
    if Path::new(name).components().count() > 1 {
        return Some(PathBuf::from(name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A `Command` for `program` that, started with [`spawn_tied`], is killed (SIGKILL) when
/// this process dies, however it dies: `setpriv --pdeathsig KILL -- program ...` when
/// util-linux's `setpriv` is available (it sets the parent-death signal and execs, so the
/// child's pid is the program's own), the plain command otherwise. Add arguments,
/// environment and stdio to it as to any `Command`.
pub fn tied_command(program: impl AsRef<OsStr>) -> Command {
    let program = program.as_ref();
    // A program that can't be found is left to `spawn` to report (NotFound), as without
    // the wrapper, rather than to `setpriv` after the fork.
    match (setpriv(), in_path(program)) {
        (Some(setpriv), Some(resolved)) => {
            let mut command = Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(OsString::from(resolved));
            command
        }
        _ => Command::new(program),
    }
}

/// The TCP port process `pid` listens on (its first listening socket), from /proc.
pub fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
    })
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` (from [`tied_command`]) from one dedicated thread that lives as long as
/// this process. The parent-death signal fires when the *thread* that forked the child
/// exits, not the process: a tokio worker, a `spawn_blocking` thread (gone after 10 s idle)
/// or a test's thread would kill the child while the process still needs it.
pub fn spawn_tied(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                // Never returns while the sender (a static) exists, i.e. for the process.
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        let mut command = command;
        return command.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the child-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the child-spawner thread is gone"))?
}

pub struct ServiceProcess {
    child: Child,
    pub base_url: String,
}

/// The limits per client address and per site, out of the way for the processes of the
/// tests and the benchmark: all their load comes from 127.0.0.1 (the benchmark opens
/// 10,000 streams and sends webhooks as fast as the ingest takes them). A test's own `env`
/// overrides them. (Variables a service does not read are ignored.)
pub const TEST_LIMITS: [(&str, &str); 5] = [
    ("SPOOL_MAX_CONNECTIONS_PER_IP", "1000000"),
    ("SPOOL_REQUESTS_PER_IP_RATE", "1000000000"),
    ("SPOOL_REQUESTS_PER_IP_BURST", "1000000000"),
    ("SPOOL_WEBHOOK_RATE", "1000000000"),
    ("SPOOL_WEBHOOK_BURST", "1000000000"),
];

/// The environment a benchmark driver starts the services with: its NATS, its sites file,
/// quiet logs, and loopback revalidation targets allowed (the test receivers).
pub fn service_env(
    nats: &crate::nats_server::NatsServer,
    sites_file: &std::path::Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites_file.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            crate::LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ]
}

impl ServiceProcess {
    /// Starts `name` (e.g. `spool-delivery`) with `env` and waits until `/readyz` is 200.
    /// JSON logs at `info` and [`TEST_LIMITS`] unless `env` says otherwise (`RUST_LOG`,
    /// `SPOOL_LOG_FORMAT`, the limits); the logs are not kept.
    pub async fn start(name: &str, env: &[(&str, String)]) -> ServiceProcess {
        let mut command = tied_command(service_binary(name));
        command
            .env("SPOOL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(TEST_LIMITS)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SPOOL_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = spawn_tied(command).unwrap_or_else(|e| panic!("starting {name}: {e}"));
        // The port it bound, read from /proc rather than from its logs, so that any log
        // level works.
        let started = Instant::now();
        let port = loop {
            if let Some(port) = listening_port(child.id()) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited with {status} before listening");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let service = ServiceProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/readyz", service.base_url);
        eventually(
            &format!("{name} ready"),
            Duration::from_secs(20),
            || async {
                let r = http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        service
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The service's process id (`setpriv` execs it, so this is the service itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Kills the process with SIGKILL (a crash: no shutdown code runs) and waits for it.
    pub async fn kill9(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Waits for the process to exit; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "the service did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// Resident memory of process `pid`, in KiB (from /proc; 0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// `/proc/<pid>/comm` once it reads `name` (after the exec), or what it reads after 5 s.
    fn comm_becomes(pid: u32, name: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == name || Instant::now() > deadline {
                return comm.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pid of a tied child is the program's own (setpriv execs), and the child outlives
    /// the thread that asked for it (the parent-death signal is per thread).
    #[test]
    fn tied_child_is_the_program_and_outlives_the_calling_thread() {
        let (mut child, comm) = std::thread::spawn(|| {
            let mut command = tied_command("sleep");
            command.arg("30");
            let child = spawn_tied(command).expect("spawn sleep");
            // Only once the program runs has setpriv armed the signal: a thread gone
            // before that would not be the one it is tied to.
            let comm = comm_becomes(child.id(), "sleep");
            (child, comm)
        })
        .join()
        .expect("spawning thread");
        // What is tested is that nothing happens: the signal a thread's exit sends would
        // arrive at once, so a short wait is the check itself, not a stand-in for one.
        std::thread::sleep(Duration::from_millis(300));
        let alive = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(comm, "sleep");
        assert!(alive, "the child died with the thread that asked for it");
    }

    /// Run by `tied_children_die_with_a_killed_parent` as a process of its own.
    #[test]
    #[ignore = "a helper process of tied_children_die_with_a_killed_parent"]
    fn helper_parent_of_a_tied_child() {
        if std::env::var_os("SPOOL_TIED_HELPER").is_none() {
            return;
        }
        let mut command = tied_command("sleep");
        command.arg("60");
        let mut child = spawn_tied(command).expect("spawn sleep");
        println!("tied-child-pid={}", child.id());
        // Killed before this returns (SIGKILL), taking the child with it.
        let _ = child.wait();
    }

    #[test]
    fn tied_children_die_with_a_killed_parent() {
        if setpriv().is_none() {
            eprintln!("no setpriv with --pdeathsig here: children are not tied");
            return;
        }
        let mut parent = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "process::tests::helper_parent_of_a_tied_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("SPOOL_TIED_HELPER", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("helper process");
        let stdout = parent.stdout.take().expect("stdout");
        let pid: u32 = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split("tied-child-pid=").nth(1)?.trim().parse().ok())
            .expect("the helper's child pid");
        assert_eq!(comm_becomes(pid, "sleep"), "sleep");
        let _ = parent.kill(); // SIGKILL: no code of the parent runs
        let _ = parent.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = loop {
            // Gone, or a zombie waiting for init to reap it.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            if stat.is_empty() || state.starts_with('Z') || Instant::now() > deadline {
                break stat.is_empty() || state.starts_with('Z');
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !gone {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        assert!(gone, "the child outlived its SIGKILLed parent");
    }

    #[test]
    fn a_missing_program_is_not_found() {
        let err = spawn_tied(tied_command("spool-no-such-program")).expect_err("spawned");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
