//! A NATS JetStream cluster of containers on a private Docker network, for the cluster fault
//! scenarios: nodes can be killed and started again, or cut off the network and healed.
//!
//! Each node is a `cache-router/nats` container started by testcontainers, named (and so
//! resolvable) on the cluster's own network, routing to every other node; its client port is
//! published on a fixed loopback port so that host-side routers, engines and reporters reach
//! it across restarts. Cutting a node off the network (`docker network disconnect`) isolates
//! it from its peers and from those clients alike. Dropping the cluster removes its
//! containers, their stores and the network.

use std::time::Duration;

use testcontainers::bollard::models::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use testcontainers::bollard::Docker;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use crate::docker::{self, off_runtime};

/// How long a node may take to answer after a (re)start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Node {
    name: String,
    port: u16,
    /// None only while dropping.
    container: Option<Container<GenericImage>>,
    running: bool,
    connected: bool,
}

/// A running cluster of NATS nodes.
pub struct NatsCluster {
    network: String,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("network", &self.network)
            .field(
                "nodes",
                &self
                    .nodes
                    .iter()
                    .map(|n| (&n.name, n.port, n.running, n.connected))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Runs one bollard call on its own runtime, off the caller's.
fn docker_call<T: Send, F>(f: impl FnOnce(Docker) -> F + Send) -> T
where
    F: std::future::Future<Output = T>,
{
    off_runtime(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let docker = Docker::connect_with_local_defaults()
                .expect("a Docker client")
                .negotiate_version()
                .await
                .expect("the Docker API answers");
            f(docker).await
        })
    })
}

impl NatsCluster {
    /// Starts `n` nodes of cluster `kvr` on a new network and returns once each answers
    /// clients (JetStream may still be electing its leaders: clients retry).
    pub fn start(n: usize) -> NatsCluster {
        let network = docker::unique_name("kvr-net");
        let net = network.clone();
        docker_call(move |d| async move {
            d.create_network(NetworkCreateRequest {
                name: net,
                ..Default::default()
            })
            .await
            .expect("create the cluster network")
        });
        let names: Vec<String> = (1..=n)
            .map(|i| docker::unique_name(&format!("nats{i}")))
            .collect();
        let routes = names
            .iter()
            .map(|name| format!("nats://{name}:6222"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = NatsCluster {
            network: network.clone(),
            nodes: Vec::new(),
        };
        for name in names {
            let port = docker::free_port();
            let image = GenericImage::new(docker::NATS_IMAGE.to_owned(), docker::image_tag())
                .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
                .with_cmd([
                    "--name",
                    &name,
                    "-js",
                    "-sd",
                    "/data",
                    "--cluster_name",
                    "kvr",
                    "--cluster",
                    "nats://0.0.0.0:6222",
                    "--routes",
                    &routes,
                ])
                .with_container_name(name.clone())
                .with_network(network.clone())
                .with_mapped_port(port, ContainerPort::Tcp(4222))
                .with_startup_timeout(READY_TIMEOUT);
            let container = off_runtime(move || image.start()).unwrap_or_else(|e| {
                panic!(
                    "cannot start NATS node {name} ({e}); build the images with \
                     `bash docker/build.sh`"
                )
            });
            cluster.nodes.push(Node {
                name,
                port,
                container: Some(container),
                running: true,
                connected: true,
            });
        }
        cluster
    }

    /// Every node's client URL, comma-separated (what a client that fails over takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The container name of node `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Kills node `i` (SIGKILL, a crash); its store stays in the container.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.running {
            let c = node.container.take().expect("the container");
            let c = off_runtime(move || {
                c.stop_with_timeout(Some(0)).expect("docker stop");
                c
            });
            node.container = Some(c);
            node.running = false;
        }
    }

    /// Starts node `i` again (same store, same port) and returns once it answers clients.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.running {
            let c = node.container.take().expect("the container");
            let c = off_runtime(move || {
                c.start().expect("docker start");
                c
            });
            node.container = Some(c);
            node.running = true;
        }
        assert!(
            docker::wait_for_nats(node.port, READY_TIMEOUT),
            "NATS node {} did not answer within {READY_TIMEOUT:?}",
            node.name
        );
    }

    /// Cuts node `i` off the network: from its peers and from its clients.
    pub fn partition(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.connected {
            return;
        }
        let (net, name) = (self.network.clone(), node.name.clone());
        docker_call(move |d| async move {
            d.disconnect_network(
                &net,
                NetworkDisconnectRequest {
                    container: Some(name),
                    force: Some(true),
                },
            )
            .await
            .expect("docker network disconnect")
        });
        node.connected = false;
    }

    /// Reconnects node `i` to the network and returns once it answers clients.
    pub fn heal(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.connected {
            let (net, name) = (self.network.clone(), node.name.clone());
            docker_call(move |d| async move {
                d.connect_network(
                    &net,
                    NetworkConnectRequest {
                        container: Some(name),
                        ..Default::default()
                    },
                )
                .await
                .expect("docker network connect")
            });
            node.connected = true;
        }
        assert!(
            docker::wait_for_nats(node.port, READY_TIMEOUT),
            "NATS node {} did not answer within {READY_TIMEOUT:?} after healing",
            node.name
        );
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(c) = node.container.take() {
                off_runtime(move || drop(c));
            }
        }
        let net = self.network.clone();
        docker_call(move |d| async move {
            let _ = d.remove_network(&net).await;
        });
    }
}
