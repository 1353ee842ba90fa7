//! A real `nats-server` with JetStream on a free port and a temporary store directory,
//! stopped when dropped (the way async-nats's own test suite runs one).
//!
//! By default the binary is spawned (`$NATS_SERVER_BIN`, the Makefile's `.tools/bin`, or
//! `PATH`). Built with the `testcontainers` feature and run with `SPOOL_TEST_NATS=docker`,
//! the same fixture runs the pinned `nats` image in Docker instead, for CI systems that
//! have an engine but no binary.

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

enum Backend {
    Process(Option<Child>),
    #[cfg(feature = "testcontainers")]
    Container(Box<crate::container::NatsContainer>),
}

pub struct NatsServer {
    backend: Backend,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
}

impl NatsServer {
    /// Starts a server on a port the kernel picks and waits until it accepts clients.
    pub async fn start() -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("spool-nats-")
            .tempdir()
            .expect("temp dir for the JetStream store");
        let log = store.path().join("nats.log");
        #[cfg(feature = "testcontainers")]
        if std::env::var("SPOOL_TEST_NATS").as_deref() == Ok("docker") {
            let container = Box::new(crate::container::NatsContainer::start().await);
            let port = container.port();
            return NatsServer {
                backend: Backend::Container(container),
                port,
                store,
                log,
            };
        }
        let mut server = NatsServer {
            backend: Backend::Process(None),
            port: 0,
            store,
            log,
        };
        server.spawn(None).await;
        server
    }

    async fn spawn(&mut self, port: Option<u16>) {
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log file");
        let start_len = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut command = crate::process::tied_command(binary());
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = crate::process::spawn_tied(command).unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({e}); run `make tools` or set NATS_SERVER_BIN",
                binary()
            )
        });
        self.backend = Backend::Process(Some(child));
        self.port = self.wait_ready(start_len).await;
    }

    /// Reads the server log (from `offset`) until it says where it listens and is ready.
    async fn wait_ready(&mut self, offset: u64) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let from = usize::try_from(offset).unwrap_or(0).min(text.len());
            let text = String::from_utf8_lossy(&text[from..]).into_owned();
            let port = text
                .lines()
                .find_map(|l| l.split("Listening for client connections on ").nth(1))
                .and_then(|addr| addr.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let (Some(port), true) = (port, text.contains("Server is ready")) {
                return port;
            }
            if let Backend::Process(Some(child)) = &mut self.backend {
                if let Some(status) = child.try_wait().ok().flatten() {
                    panic!("nats-server exited with {status}:\n{text}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready after 20 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The server's process id (`None` in a container, or while stopped).
    pub fn pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Process(Some(child)) => Some(child.id()),
            _ => None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM, as an orchestrator would) and waits for it.
    pub async fn stop(&mut self) {
        match &mut self.backend {
            Backend::Process(slot) => {
                let Some(mut child) = slot.take() else { return };
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = child.wait();
            }
            #[cfg(feature = "testcontainers")]
            Backend::Container(c) => c.stop().await,
        }
    }

    /// Kills the server with SIGKILL (a crash: no shutdown code runs) and waits for it;
    /// [`NatsServer::restart`] starts it again on the same port with the same store.
    pub async fn kill9(&mut self) {
        match &mut self.backend {
            Backend::Process(slot) => {
                if let Some(mut child) = slot.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            #[cfg(feature = "testcontainers")]
            Backend::Container(c) => c.stop().await,
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        match &mut self.backend {
            Backend::Process(_) => {
                let port = self.port;
                self.spawn(Some(port)).await;
            }
            #[cfg(feature = "testcontainers")]
            Backend::Container(c) => c.restart().await,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Backend::Process(Some(child)) = &mut self.backend {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
