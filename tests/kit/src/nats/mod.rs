//! A real `nats-server` with JetStream for one test, in a container or as a local process.
//!
//! Which one runs is chosen by `CACHE_ROUTER_TEST_NATS`:
//! - `docker`: a container of the locally built `cache-router/nats` image started by
//!   testcontainers (`scripts/test.sh` sets this where a Docker engine answers, after
//!   `docker/build.sh`); a missing engine or image is an error;
//! - `local`: the `nats-server` binary (`NATS_SERVER_BIN`, else `PATH`);
//! - unset (`auto`): the container when Docker answers and the image is built, else the local
//!   binary.
//!
//! Each test binary says once, on stderr, which backend it uses and why. Both backends give
//! the same contract: [`NatsServer::url`] on 127.0.0.1, a fresh JetStream store per server,
//! [`NatsServer::stop`] as a crash (SIGKILL) and [`NatsServer::restart`] on the same port with
//! the same store, and dropping the fixture removes the server and its store.
//!
//! [`NatsServer::start_with_config`] adds a configuration file (accounts, users, permissions,
//! TLS, operator mode) and the files it names, on either backend; [`permissions`], [`certs`]
//! and [`jwt`] make what such a configuration needs, and [`TempDir`] holds a client's copies.

pub mod certs;
mod container;
pub mod jwt;
mod local;
pub mod permissions;
mod temp_dir;

use std::path::Path;
use std::sync::Once;

use crate::docker;
use container::ContainerNats;
use local::LocalNats;
pub use temp_dir::TempDir;

/// The name of the configuration file among a [`NatsConf`]'s files.
const CONF_FILE: &str = "nats.conf";

/// A nats-server configuration file and the files it names (certificates, keys, an operator
/// JWT), for [`NatsServer::start_with_config`].
///
/// In the text, `{dir}` stands for the directory the server finds the files in: a private
/// temp dir for a local server, a directory inside the container for a container. The fixture's
/// command-line flags still apply and take precedence over the file: the client port (a random
/// one locally, 4222 published on a loopback port in a container) and JetStream with its store
/// (`-js -sd`), so the text should set neither `listen`/`port` nor a JetStream store. With a
/// `tls` block, [`NatsServer::url`] stays `nats://`: the server's `INFO` requires TLS and
/// clients upgrade (the certificate must name 127.0.0.1, see [`certs`]).
#[derive(Clone, Debug, Default)]
pub struct NatsConf {
    text: String,
    files: Vec<(String, Vec<u8>)>,
}

impl NatsConf {
    pub fn new(text: impl Into<String>) -> NatsConf {
        NatsConf {
            text: text.into(),
            files: Vec::new(),
        }
    }

    /// Adds the file `name` (a plain file name, not `nats.conf`) with `contents`; the text
    /// names it as `{dir}/<name>`.
    pub fn with_file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> NatsConf {
        assert!(
            !name.is_empty() && !name.contains('/') && name != CONF_FILE,
            "{name:?}: a NatsConf file needs a plain name other than {CONF_FILE}"
        );
        self.files.push((name.to_owned(), contents.into()));
        self
    }

    /// Every file to put in the server's directory `dir`, the configuration itself (`{dir}`
    /// replaced) first.
    fn files_in(&self, dir: &str) -> Vec<(String, Vec<u8>)> {
        let conf = (
            CONF_FILE.to_owned(),
            self.text.replace("{dir}", dir).into_bytes(),
        );
        std::iter::once(conf)
            .chain(self.files.iter().cloned())
            .collect()
    }
}

/// Where a server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A container of `cache-router/nats`, started by testcontainers.
    Container,
    /// A local `nats-server` process.
    Local,
}

/// The backend `start` uses, and why (said once per test binary).
pub fn backend() -> Backend {
    static SAID: Once = Once::new();
    let (backend, why) = choose();
    SAID.call_once(|| eprintln!("NATS fixture: {backend:?} ({why})"));
    backend
}

fn choose() -> (Backend, String) {
    let want = std::env::var("CACHE_ROUTER_TEST_NATS").unwrap_or_default();
    let tag = docker::image_tag();
    let image = format!("{}:{tag}", docker::NATS_IMAGE);
    match want.as_str() {
        "local" => (Backend::Local, "CACHE_ROUTER_TEST_NATS=local".into()),
        "docker" => {
            assert!(
                docker::engine_answers(),
                "CACHE_ROUTER_TEST_NATS=docker, but no Docker engine answers (docker info failed)"
            );
            assert!(
                docker::image_present(docker::NATS_IMAGE, &tag),
                "CACHE_ROUTER_TEST_NATS=docker, but {image} is not built: run bash docker/build.sh"
            );
            (
                Backend::Container,
                format!("CACHE_ROUTER_TEST_NATS=docker, {image}"),
            )
        }
        _ if !docker::engine_answers() => (
            Backend::Local,
            "no Docker engine answers (docker info failed): the local nats-server binary".into(),
        ),
        _ if !docker::image_present(docker::NATS_IMAGE, &tag) => (
            Backend::Local,
            format!(
                "Docker answers but {image} is not built (bash docker/build.sh): the local binary"
            ),
        ),
        _ => (
            Backend::Container,
            format!("Docker answers and {image} is built"),
        ),
    }
}

#[derive(Debug)]
enum Server {
    Container(Box<ContainerNats>),
    Local(LocalNats),
}

/// A running (or, between [`stop`](NatsServer::stop) and [`restart`](NatsServer::restart),
/// stopped) nats-server with JetStream, owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    server: Server,
}

impl NatsServer {
    /// Starts a server on the chosen [`backend`] and returns once it accepts clients. Panics,
    /// with the server's log, if it does not become ready.
    pub fn start() -> NatsServer {
        Self::start_on(backend())
    }

    /// Starts a server on `backend`, whatever the environment asks for.
    pub fn start_on(backend: Backend) -> NatsServer {
        Self::launch(backend, None)
    }

    /// [`start`](NatsServer::start) with a configuration file (see [`NatsConf`]) on the chosen
    /// [`backend`]. Readiness is read as without one (the server's log, or its `INFO` line,
    /// which a server that requires authentication or TLS sends first all the same).
    pub fn start_with_config(conf: &NatsConf) -> NatsServer {
        Self::start_with_config_on(backend(), conf)
    }

    /// [`start_with_config`](NatsServer::start_with_config) on `backend`.
    pub fn start_with_config_on(backend: Backend, conf: &NatsConf) -> NatsServer {
        Self::launch(backend, Some(conf))
    }

    fn launch(backend: Backend, conf: Option<&NatsConf>) -> NatsServer {
        let server = match backend {
            Backend::Container => Server::Container(Box::new(ContainerNats::start(conf))),
            Backend::Local => Server::Local(LocalNats::start(conf)),
        };
        NatsServer { server }
    }

    pub fn backend(&self) -> Backend {
        match self.server {
            Server::Container(_) => Backend::Container,
            Server::Local(_) => Backend::Local,
        }
    }

    /// `nats://127.0.0.1:PORT`; the same across [`restart`](NatsServer::restart).
    pub fn url(&self) -> String {
        match &self.server {
            Server::Container(c) => c.url(),
            Server::Local(l) => l.url(),
        }
    }

    /// The client port; the same across [`restart`](NatsServer::restart).
    pub fn port(&self) -> u16 {
        match &self.server {
            Server::Container(c) => c.port(),
            Server::Local(l) => l.port(),
        }
    }

    /// The local server's store directory (None for a container: its store lives inside it).
    pub fn store_dir(&self) -> Option<&Path> {
        match &self.server {
            Server::Container(_) => None,
            Server::Local(l) => Some(l.store_dir()),
        }
    }

    /// The local server's process id (None while stopped, or for a container).
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::Container(_) => None,
            Server::Local(l) => l.pid(),
        }
    }

    /// The container's id (None for a local server).
    pub fn container_id(&self) -> Option<&str> {
        match &self.server {
            Server::Container(c) => Some(c.container_id()),
            Server::Local(_) => None,
        }
    }

    /// Whether the server is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.server {
            Server::Container(c) => c.is_running(),
            Server::Local(l) => l.is_running(),
        }
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        match &self.server {
            Server::Container(c) => c.log_tail(),
            Server::Local(l) => l.log_tail(),
        }
    }

    /// Kills the server (a crash, not a clean shutdown); its store is kept.
    pub fn stop(&mut self) {
        match &mut self.server {
            Server::Container(c) => c.stop(),
            Server::Local(l) => l.stop(),
        }
    }

    /// Starts the server again on the same port with the same store, and returns once it
    /// accepts clients.
    pub fn restart(&mut self) {
        match &mut self.server {
            Server::Container(c) => c.restart(),
            Server::Local(l) => l.restart(),
        }
    }
}
