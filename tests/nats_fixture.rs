//! Tests of the test kit's real-`nats-server` fixture (`tests/kit/src/nats/`), on both of its
//! backends (a local process; a container of the locally built image, where Docker runs): core
//! pub/sub works on the URL it hands out, JetStream data survives `stop()` + `restart()` on
//! the same port and store, clients reconnect, and dropping it removes the server and its
//! store.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use cache_router_testkit::nats::{self, Backend, NatsServer};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Upper bound for anything a healthy local server answers at once.
const WAIT: Duration = Duration::from_secs(10);
/// Upper bound for a client to notice a restarted server and reconnect by itself.
const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// Connects to `url`, retrying for a bounded time: the fixture returns once the server logged
/// that it is ready, so the first attempt is expected to succeed.
async fn connect(url: &str) -> Client {
    let mut last_error = None;
    for attempt in 0..20u64 {
        match async_nats::connect(url).await {
            Ok(client) => return client,
            Err(e) => last_error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(25 * (attempt + 1))).await;
    }
    panic!("cannot connect to {url}: {last_error:?}");
}

/// Returns once the server has processed everything `client` sent before, e.g. its SUBs, so that
/// other connections see them: a message to a private inbox comes back only after that.
async fn server_round_trip(client: &Client) {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, "sync".into()).await.unwrap();
    client.flush().await.unwrap();
    timeout(WAIT, probe.next())
        .await
        .expect("no round trip within 10 s")
        .expect("subscription closed");
}

/// Waits (bounded) for the first event that `want` accepts, skipping the others.
async fn wait_for_event(
    events: &mut mpsc::UnboundedReceiver<Event>,
    what: &str,
    limit: Duration,
    want: impl Fn(&Event) -> bool,
) {
    let found = timeout(limit, async {
        while let Some(event) = events.recv().await {
            if want(&event) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "no {what} event within {limit:?} (Err: timed out, Ok(false): channel closed)"
    );
}

/// The container backend runs where Docker answers and the image is built (in CI it is
/// required); elsewhere these tests say so and check the local backend only.
fn container_backend() -> Option<Backend> {
    if nats::backend() == Backend::Container {
        Some(Backend::Container)
    } else {
        eprintln!("no container backend here: its tests check nothing (see the line above)");
        None
    }
}

#[tokio::test]
async fn core_publish_subscribe_round_trip() {
    let server = NatsServer::start();
    assert_ne!(server.port(), 0);
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));

    let client = connect(&server.url()).await;
    if server.backend() == Backend::Local {
        // A container's server listens on 4222 inside; the fixture publishes another port.
        assert_eq!(client.server_info().port, server.port());
    }
    assert!(
        client.server_info().jetstream,
        "the fixture enables JetStream"
    );

    let mut subscriber = client.subscribe("fixture.ping").await.unwrap();
    // The SUB reaches the server before the PUB: same connection, in order, and flushed.
    client.flush().await.unwrap();
    client
        .publish("fixture.ping", "hello".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let message = timeout(WAIT, subscriber.next())
        .await
        .expect("no message within 10 s")
        .expect("subscription closed");
    assert_eq!(message.subject.as_str(), "fixture.ping");
    assert_eq!(&message.payload[..], b"hello");

    // Request/reply round trip through a second connection, on the same URL.
    let responder = connect(&server.url()).await;
    let mut requests = responder.subscribe("fixture.echo").await.unwrap();
    server_round_trip(&responder).await;
    let echo = tokio::spawn(async move {
        let request = requests.next().await.expect("subscription closed");
        let reply = request.reply.expect("a request carries a reply subject");
        let mut answer = b"echo: ".to_vec();
        answer.extend_from_slice(&request.payload);
        responder.publish(reply, answer.into()).await.unwrap();
        responder.flush().await.unwrap();
    });
    let response = timeout(WAIT, client.request("fixture.echo", "hi".into()))
        .await
        .expect("no reply within 10 s")
        .unwrap();
    assert_eq!(&response.payload[..], b"echo: hi");
    echo.await.unwrap();
}

#[tokio::test]
async fn jetstream_data_survives_restart_on_same_port_and_store_locally() {
    jetstream_data_survives_restart(Backend::Local).await;
}

#[tokio::test]
async fn jetstream_data_survives_restart_on_same_port_and_store_in_a_container() {
    if let Some(b) = container_backend() {
        jetstream_data_survives_restart(b).await;
    }
}

async fn jetstream_data_survives_restart(backend: Backend) {
    let mut server = NatsServer::start_on(backend);
    let local = backend == Backend::Local;
    let (url, port) = (server.url(), server.port());

    // This client stays connected across the restart and must reconnect by itself.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let old_client = ConnectOptions::new()
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        .reconnect_delay_callback(|attempts| Duration::from_millis((50 * attempts as u64).min(500)))
        .connect(&url)
        .await
        .unwrap();
    let old_js = jetstream::new(old_client.clone());

    let mut created = old_js
        .get_or_create_stream(stream::Config {
            name: "FIXTURE".to_owned(),
            subjects: vec!["fixture.js.>".to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let ack = old_js
        .publish("fixture.js.one", "persisted".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "FIXTURE");
    assert_eq!(ack.sequence, 1);
    assert_eq!(created.info().await.unwrap().state.messages, 1);
    if local {
        let stream_dir = server.store_dir().unwrap().join("jetstream");
        assert!(
            stream_dir.is_dir(),
            "JetStream writes under {}",
            stream_dir.display()
        );
    }

    let old_pid = server.pid();
    server.stop();
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    wait_for_event(&mut events, "Disconnected", WAIT, |e| {
        matches!(e, Event::Disconnected)
    })
    .await;
    if local {
        assert!(
            server.store_dir().unwrap().join("jetstream").is_dir(),
            "stop() keeps the store"
        );
    }

    server.restart();
    assert!(server.is_running());
    if local {
        assert_ne!(server.pid(), old_pid, "a new process");
        assert!(server.log_tail().contains("--- fixture: restart on port"));
    }
    assert_eq!(server.port(), port);
    assert_eq!(server.url(), url);

    // A new client on the same URL finds the stream and its message, read back from disk.
    let new_client = connect(&url).await;
    let new_js = jetstream::new(new_client);
    let mut stream = new_js.get_stream("FIXTURE").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec!["fixture.js.>".to_owned()]);
    assert_eq!(info.state.messages, 1);
    assert_eq!(info.state.last_sequence, 1);
    let message = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(message.subject.as_str(), "fixture.js.one");
    assert_eq!(&message.payload[..], b"persisted");

    // The stream still takes writes, continuing the sequence.
    let ack2 = new_js
        .publish("fixture.js.two", "after restart".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack2.sequence, 2);

    // The old client reconnects on its own and sees both messages.
    wait_for_event(&mut events, "Connected", RECONNECT_WAIT, |e| {
        matches!(e, Event::Connected)
    })
    .await;
    let info = old_js
        .get_stream("FIXTURE")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 2);
    let message = stream.get_raw_message(ack2.sequence).await.unwrap();
    assert_eq!(&message.payload[..], b"after restart");
}

#[test]
fn drop_kills_the_server_and_removes_the_store() {
    let server = NatsServer::start_on(Backend::Local);
    let dir = server.store_dir().unwrap().to_path_buf();
    let pid = server.pid().expect("running");
    assert!(dir.is_dir());
    assert!(server.log_tail().contains("Server is ready"));
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let has_proc = cfg!(target_os = "linux");
    if has_proc {
        assert!(proc_dir.exists(), "the server process {pid} runs");
    }

    drop(server);
    assert!(!dir.exists(), "{} removed", dir.display());
    if has_proc {
        // Killed and reaped, so no zombie is left either.
        assert!(!proc_dir.exists(), "the server process {pid} is gone");
    }
}

#[test]
fn dropping_a_container_removes_it() {
    let Some(b) = container_backend() else { return };
    let server = NatsServer::start_on(b);
    let id = server.container_id().unwrap().to_owned();
    let exists = |id: &str| {
        std::process::Command::new("docker")
            .args(["container", "inspect", id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(exists(&id), "container {id} runs");
    drop(server);
    assert!(!exists(&id), "container {id} removed with its store");
}

#[test]
fn servers_started_together_get_their_own_ports_and_stores() {
    let a = NatsServer::start_on(Backend::Local);
    let b = NatsServer::start_on(Backend::Local);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}

#[test]
#[should_panic(expected = "still in use after 8 attempts")]
fn restart_reports_a_port_taken_while_stopped() {
    let mut server = NatsServer::start_on(Backend::Local);
    server.stop();
    // Another listener takes the port while the server is down: the fixture retries with a
    // backoff (a few seconds in all), then fails with a clear message instead of hanging.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", server.port()))
        .expect("the stopped server's port is free");
    server.restart();
}
