//! A service binary of this build run as its own process, configured by environment as in
//! production (`SPOOL_LISTEN=127.0.0.1:0`, JSON logs from which the bound port is read).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{eventually, service_binary};

pub struct ServiceProcess {
    child: Child,
    pub base_url: String,
}

impl ServiceProcess {
    /// Starts `name` (e.g. `spool-delivery`) with `env` and waits until `/readyz` is 200.
    pub async fn start(name: &str, env: &[(&str, String)]) -> ServiceProcess {
        let mut child = Command::new(service_binary(name))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SPOOL_LISTEN", "127.0.0.1:0")
            .env("SPOOL_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        // The service logs the port it bound as JSON: {"port": N, ...}.
        let stdout = child.stdout.take().expect("stdout");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(port) = v["port"].as_u64() {
                        let _ = port_tx.send(port);
                    }
                }
            }
        });
        let port =
            tokio::task::spawn_blocking(move || port_rx.recv_timeout(Duration::from_secs(20)))
                .await
                .expect("port reader")
                .unwrap_or_else(|_| panic!("{name} did not log its port"));
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
