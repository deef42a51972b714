//! The container backend of [`super::NatsServer`]: testcontainers-modules' NATS image pointed
//! at the locally built `cache-router/nats` (no registry), JetStream on, the client port
//! published on a fixed loopback port so that it survives a stop and a start.
//!
//! With a [`NatsConf`], its files are copied into the container's [`CONF_DIR`] before it starts
//! (mode 0644, so the image's non-root user reads them) and the server also runs with
//! `-c CONF_DIR/nats.conf`; the JetStream flags keep precedence over the file.

use std::time::Duration;

use testcontainers::core::ContainerPort;
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, ImageExt};
use testcontainers_modules::nats::{Nats, NatsServerCmd};

use super::{NatsConf, CONF_FILE};
use crate::docker::{self, off_runtime};

/// Where a configuration's files go inside the container (`{dir}`).
const CONF_DIR: &str = "/etc/nats-test";

/// Attempts at publishing the client port when Docker says it is already allocated.
const PORT_ATTEMPTS: u32 = 5;
/// How long a (re)start may take to answer clients.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A NATS container owned by one test; dropping it removes the container and its store.
pub(super) struct ContainerNats {
    /// None only while dropping.
    container: Option<Container<Nats>>,
    port: u16,
    running: bool,
    restarts: u32,
}

impl std::fmt::Debug for ContainerNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerNats")
            .field("id", &self.container_id())
            .field("port", &self.port)
            .field("running", &self.running)
            .finish()
    }
}

impl ContainerNats {
    pub(super) fn start(conf: Option<&NatsConf>) -> ContainerNats {
        let tag = docker::image_tag();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = docker::free_port();
            // The module's JetStream flag, and the store in the image's /data (the default,
            // /tmp/nats, works too; /data is the one owned by the server's user).
            let conf_arg = conf.map(|_| ["-c".to_owned(), format!("{CONF_DIR}/{CONF_FILE}")]);
            let cmd: Vec<String> = conf_arg
                .into_iter()
                .flatten()
                .chain(&NatsServerCmd::default().with_jetstream())
                .chain(["-sd".to_owned(), "/data".to_owned()])
                .collect();
            let mut image = Nats::default()
                .with_cmd(cmd)
                .with_name(docker::NATS_IMAGE)
                .with_tag(tag.clone())
                .with_mapped_port(port, ContainerPort::Tcp(4222))
                .with_startup_timeout(READY_TIMEOUT);
            for (name, contents) in conf.map(|c| c.files_in(CONF_DIR)).unwrap_or_default() {
                image = image.with_copy_to(format!("{CONF_DIR}/{name}"), contents);
            }
            match off_runtime(move || image.start()) {
                Ok(container) => {
                    return ContainerNats {
                        container: Some(container),
                        port,
                        running: true,
                        restarts: 0,
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        panic!(
            "cannot start {}:{tag} ({last_error}); build the images with `bash docker/build.sh`",
            docker::NATS_IMAGE
        );
    }

    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    pub(super) fn container_id(&self) -> &str {
        self.container.as_ref().map_or("", |c| c.id())
    }

    pub(super) fn is_running(&self) -> bool {
        self.running
    }

    /// SIGKILL, as a crash: `docker stop` with no grace. The container (its store) stays.
    pub(super) fn stop(&mut self) {
        if !self.running {
            return;
        }
        let c = self.container.take().expect("the container");
        let c = off_runtime(move || {
            c.stop_with_timeout(Some(0)).expect("docker stop");
            c
        });
        self.container = Some(c);
        self.running = false;
    }

    /// Starts the same container again (same store, same published port) and returns once
    /// the server answers.
    pub(super) fn restart(&mut self) {
        self.stop();
        let c = self.container.take().expect("the container");
        let c = off_runtime(move || {
            c.start().expect("docker start");
            c
        });
        self.container = Some(c);
        assert!(
            docker::wait_for_nats(self.port, READY_TIMEOUT),
            "the restarted NATS container {} did not answer on port {} within {READY_TIMEOUT:?}",
            self.container_id(),
            self.port
        );
        self.running = true;
        self.restarts += 1;
    }

    /// What the server logged (for failure messages).
    pub(super) fn log_tail(&self) -> String {
        let Some(c) = self.container.as_ref() else {
            return String::new();
        };
        let id = c.id().to_owned();
        // The docker CLI rather than the container handle: this runs in Drop too.
        let bytes = std::process::Command::new("docker")
            .args(["logs", &id])
            .output()
            .map(|o| o.stderr)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(200);
        format!(
            "(container {}, {} restart(s))\n{}\n",
            self.container_id(),
            self.restarts,
            lines[from..].join("\n")
        )
    }
}

impl Drop for ContainerNats {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats container log ---\n{}", self.log_tail());
        }
        if let Some(c) = self.container.take() {
            // The blocking container removes itself on drop, on its own runtime.
            off_runtime(move || drop(c));
        }
    }
}
