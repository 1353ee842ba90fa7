//! A 3-node JetStream cluster of real `nats-server` processes on loopback, for the fault
//! tests: each node with its own free client, cluster and monitoring ports, its own
//! temporary store (`sync_interval: always`: an ack means "on disk" on a quorum), routes to
//! the other two, and the server names `n1`..`n3`. A node can be killed (SIGKILL),
//! restarted on the same ports with the same store, paused (SIGSTOP) and resumed (SIGCONT);
//! the cluster says which node leads a stream and which leads the meta group.
//!
//! Readiness is waited for on conditions with a deadline, never with a sleep: a node is up
//! when its log says it is ready and its `/healthz` (which JetStream answers only once the
//! node is current with the meta group and its streams) is `200`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// How long a node (or the whole cluster) may take to be up after a (re)start.
const READY_WITHIN: Duration = Duration::from_secs(60);

struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    fn running(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {signal} {}", self.name);
        }
    }
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `n` ports the kernel reports free (all bound at once, so they are distinct, then
/// released for the servers to take).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
}

impl NatsCluster {
    /// Starts three nodes and waits until every one is healthy and they agree on a meta
    /// leader.
    pub async fn start() -> NatsCluster {
        const SIZE: usize = 3;
        let dir = tempfile::Builder::new()
            .prefix("spool-nats-cluster-")
            .tempdir()
            .expect("temp dir for the cluster");
        let ports = free_ports(3 * SIZE);
        let routes: Vec<String> = (0..SIZE)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[SIZE + i]))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..SIZE {
            let name = format!("n{}", i + 1);
            let (client_port, cluster_port, http_port) =
                (ports[i], ports[SIZE + i], ports[2 * SIZE + i]);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let config = dir.path().join(format!("{name}.conf"));
            let text = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client_port}\n\
                 http: 127.0.0.1:{http_port}\n\
                 jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: spool\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n",
                store = store.display().to_string(),
                routes = routes.join(", "),
            );
            std::fs::write(&config, text).expect("write node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                http_port,
                config,
                child: None,
                paused: false,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("HTTP client"),
            _dir: dir,
        };
        for i in 0..SIZE {
            cluster.spawn(i);
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// The node names, `n1`..`n3`.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Every node's client URL, comma-separated: what `NATS_URL` is set to.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of one node.
    pub fn url(&self, name: &str) -> String {
        format!("nats://127.0.0.1:{}", self.node(name).client_port)
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node(&self, name: &str) -> &Node {
        &self.nodes[self.index(name)]
    }

    /// The names of the nodes that run and are not paused.
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.name.clone())
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} already runs", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let mut command = crate::process::tied_command(crate::nats_server::binary());
        command
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let child = crate::process::spawn_tied(command).unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({e}); run `make tools` or set NATS_SERVER_BIN",
                crate::nats_server::binary()
            )
        });
        node.child = Some(child);
        node.paused = false;
    }

    /// Kills a node with SIGKILL (no shutdown code runs) and waits for it to be gone.
    pub async fn kill9(&mut self, name: &str) {
        let i = self.index(name);
        let node = &mut self.nodes[i];
        let Some(mut child) = node.child.take() else {
            panic!("{name} is not running");
        };
        let _ = child.kill();
        let _ = child.wait();
        node.paused = false;
    }

    /// Starts a killed node again, on the same ports with the same store, and waits until
    /// the whole cluster is healthy again (the node caught up).
    pub async fn restart(&mut self, name: &str) {
        let i = self.index(name);
        self.spawn(i);
        self.wait_healthy().await;
    }

    /// Pauses a node (SIGSTOP): it holds its connections but answers nothing.
    pub fn pause(&mut self, name: &str) {
        let i = self.index(name);
        self.nodes[i].signal("-STOP");
        self.nodes[i].paused = true;
    }

    /// Resumes a paused node (SIGCONT) and waits until the cluster is healthy again.
    pub async fn resume(&mut self, name: &str) {
        let i = self.index(name);
        self.nodes[i].signal("-CONT");
        self.nodes[i].paused = false;
        self.wait_healthy().await;
    }

    /// A node's `/jsz` (`None` while it can't be read).
    async fn jsz(&self, name: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/jsz", self.node(name).http_port);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn healthy(&self, name: &str) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", self.node(name).http_port);
        match self.http.get(url).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }

    /// Waits until every running node answers `/healthz` with `200` and all of them name
    /// the same meta leader, one of the running nodes.
    pub async fn wait_healthy(&self) {
        eventually("the NATS cluster healthy", READY_WITHIN, || async {
            let running = self.running();
            let mut leaders = Vec::new();
            for name in &running {
                self.assert_alive(name);
                if !self.healthy(name).await {
                    return None;
                }
                let jsz = self.jsz(name).await?;
                leaders.push(jsz["meta_cluster"]["leader"].as_str()?.to_string());
            }
            let first = leaders.first()?;
            (leaders.iter().all(|l| l == first) && running.contains(first)).then_some(())
        })
        .await;
    }

    /// Panics with the end of its log if a node that should run has exited.
    fn assert_alive(&self, name: &str) {
        let node = self.node(name);
        let Some(child) = &node.child else { return };
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if stat.is_empty() || state.starts_with('Z') {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("nats-server {name} exited:\n{}", tail.join("\n"));
        }
    }

    /// The meta leader as the running nodes agree on it (waits for one to be elected).
    pub async fn meta_leader(&self) -> String {
        eventually("a meta leader", READY_WITHIN, || async {
            let mut leaders = Vec::new();
            for name in self.running() {
                let jsz = self.jsz(&name).await?;
                leaders.push(jsz["meta_cluster"]["leader"].as_str()?.to_string());
            }
            let first = leaders.first()?.clone();
            (leaders.iter().all(|l| *l == first) && self.running().contains(&first))
                .then_some(first)
        })
        .await
    }

    /// The leader of `stream`, asked of a running node through the JetStream API
    /// (`$JS.API.STREAM.INFO.<stream>`, `cluster.leader`); waits for one that runs.
    pub async fn stream_leader(&self, stream: &str) -> String {
        self.stream_leader_other_than(stream, None).await
    }

    /// Waits until `stream` has a running leader other than `not` (after a leader was
    /// paused: the others elected a new one) and returns it.
    pub async fn stream_leader_other_than(&self, stream: &str, not: Option<&str>) -> String {
        eventually(
            &format!("a leader of {stream} other than {not:?}"),
            READY_WITHIN,
            || async {
                for name in self.running() {
                    let Some(leader) = self.ask_stream_leader(&name, stream).await else {
                        continue;
                    };
                    if Some(leader.as_str()) != not && self.running().contains(&leader) {
                        return Some(leader);
                    }
                }
                None
            },
        )
        .await
    }

    async fn ask_stream_leader(&self, node: &str, stream: &str) -> Option<String> {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
        let client = tokio::time::timeout(
            Duration::from_secs(3),
            options.connect(self.url(node).as_str()),
        )
        .await
        .ok()?
        .ok()?;
        let js = async_nats::jetstream::new(client);
        let info = tokio::time::timeout(Duration::from_secs(3), async {
            js.get_stream(stream).await.ok()?.info().await.ok().cloned()
        })
        .await
        .ok()??;
        info.cluster?.leader
    }

    /// The node a client named `name` (a service names its connection after itself,
    /// `spool-ingest`, ...) is connected to, from the running nodes' `/connz`.
    pub async fn node_of_client(&self, name: &str) -> String {
        eventually(&format!("the node of {name}"), READY_WITHIN, || async {
            for node in self.running() {
                let url = format!(
                    "http://127.0.0.1:{}/connz?limit=4096",
                    self.node(&node).http_port
                );
                let Ok(r) = self.http.get(url).send().await else {
                    continue;
                };
                let Ok(connz) = r.json::<serde_json::Value>().await else {
                    continue;
                };
                let connections = connz["connections"].as_array().cloned().unwrap_or_default();
                if connections.iter().any(|c| c["name"] == name) {
                    return Some(node);
                }
            }
            None
        })
        .await
    }

    /// Hands the leadership of `stream` to `to` (a step-down naming it as preferred:
    /// `$JS.API.STREAM.LEADER.STEPDOWN.<stream>`) and waits until it leads.
    pub async fn move_stream_leader(&self, stream: &str, to: &str) {
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        self.move_leader(&subject, to, || self.stream_leader(stream))
            .await;
    }

    /// Hands the leadership of the durable `consumer` of `stream` to `to`
    /// (`$JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>`) and waits until it leads.
    pub async fn move_consumer_leader(&self, stream: &str, consumer: &str, to: &str) {
        let subject = format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}");
        self.move_leader(&subject, to, || self.consumer_leader(stream, consumer))
            .await;
    }

    async fn move_leader<F, Fut>(&self, stepdown: &str, to: &str, leader: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let client = async_nats::connect(self.url(to)).await.expect("connect");
        let body = serde_json::json!({ "placement": { "preferred": to } }).to_string();
        for _ in 0..5 {
            if leader().await == to {
                return;
            }
            let _ = client
                .request(stepdown.to_string(), body.clone().into())
                .await;
            let moved = tokio::time::timeout(Duration::from_secs(10), async {
                while leader().await != to {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if moved.is_ok() {
                return;
            }
        }
        panic!("the leadership did not move to {to} ({stepdown})");
    }

    /// The leader of the durable consumer `consumer` of `stream`, asked of a running node
    /// (`$JS.API.CONSUMER.INFO.<stream>.<consumer>`, `cluster.leader`); waits for one
    /// that runs and is not `not`.
    pub async fn consumer_leader_other_than(
        &self,
        stream: &str,
        consumer: &str,
        not: Option<&str>,
    ) -> String {
        eventually(
            &format!("a leader of consumer {consumer} other than {not:?}"),
            READY_WITHIN,
            || async {
                for name in self.running() {
                    let Ok(Ok(client)) = tokio::time::timeout(
                        Duration::from_secs(3),
                        async_nats::connect(self.url(&name)),
                    )
                    .await
                    else {
                        continue;
                    };
                    let js = async_nats::jetstream::new(client);
                    let info = tokio::time::timeout(Duration::from_secs(3), async {
                        let stream = js.get_stream(stream).await.ok()?;
                        let mut c: async_nats::jetstream::consumer::PullConsumer =
                            stream.get_consumer(consumer).await.ok()?;
                        c.info().await.ok().cloned()
                    })
                    .await;
                    let Ok(Some(info)) = info else { continue };
                    let Some(leader) = info.cluster.and_then(|c| c.leader) else {
                        continue;
                    };
                    if Some(leader.as_str()) != not && self.running().contains(&leader) {
                        return Some(leader);
                    }
                }
                None
            },
        )
        .await
    }

    /// The leader of the durable consumer `consumer` of `stream`; waits for one that runs.
    pub async fn consumer_leader(&self, stream: &str, consumer: &str) -> String {
        self.consumer_leader_other_than(stream, consumer, None)
            .await
    }

    /// The configured replicas of `stream`, as a running node reports them.
    pub async fn stream_replicas(&self, stream: &str) -> usize {
        eventually(&format!("{stream} info"), READY_WITHIN, || async {
            for name in self.running() {
                let Ok(client) = async_nats::connect(self.url(&name)).await else {
                    continue;
                };
                let js = async_nats::jetstream::new(client);
                let Ok(mut s) = js.get_stream(stream).await else {
                    continue;
                };
                if let Ok(info) = s.info().await {
                    return Some(info.config.num_replicas);
                }
            }
            None
        })
        .await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
