//! A real `nats-server` with JetStream on a free port and a temporary store directory,
//! stopped when dropped (the way async-nats's own test suite runs one).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where to find the binary: `$NATS_SERVER_BIN`, then the Makefile's tools folder, then `PATH`.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
}

impl NatsServer {
    /// Starts a server on a port the kernel picks and waits until it accepts clients.
    pub fn start() -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("spool-nats-")
            .tempdir()
            .expect("temp dir for the JetStream store");
        let log = store.path().join("nats.log");
        let mut server = NatsServer { child: None, port: 0, store, log };
        server.spawn(None);
        server
    }

    fn spawn(&mut self, port: Option<u16>) {
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log file");
        let start_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {:?} ({e}); run `make tools` or set NATS_SERVER_BIN", binary())
            });
        self.child = Some(child);
        self.port = self.wait_ready(start_len);
    }

    /// Reads the server log (from `offset`) until it says where it listens and is ready.
    fn wait_ready(&mut self, offset: u64) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text[usize::try_from(offset).unwrap_or(0).min(text.len())..]).into_owned();
            let port = text
                .lines()
                .find_map(|l| l.split("Listening for client connections on ").nth(1))
                .and_then(|addr| addr.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let (Some(port), true) = (port, text.contains("Server is ready")) {
                return port;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("nats-server exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "nats-server not ready after 20 s:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM, as an orchestrator would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(Some(port));
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
