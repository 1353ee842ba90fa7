//! NATS in Docker through `testcontainers` (opt-in: feature `testcontainers` and
//! `SPOOL_TEST_NATS=docker`). The image tag is pinned to the server version the Makefile
//! installs. The host port is fixed at start so a restart keeps the clients' URL.

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const IMAGE: &str = "nats";
pub const TAG: &str = "2.15.1-alpine";

pub struct NatsContainer {
    container: ContainerAsync<GenericImage>,
    port: u16,
}

impl NatsContainer {
    pub async fn start() -> NatsContainer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let container = GenericImage::new(IMAGE, TAG)
            .with_exposed_port(4222.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_mapped_port(port, 4222.tcp())
            .with_cmd(["-js", "-sd", "/data"])
            .start()
            .await
            .expect("starting the nats container (is a Docker engine running?)");
        NatsContainer { container, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn stop(&self) {
        self.container
            .stop()
            .await
            .expect("stopping the nats container");
    }

    pub async fn restart(&self) {
        self.container
            .start()
            .await
            .expect("restarting the nats container");
    }
}
