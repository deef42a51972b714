//! NATS authentication, authorization and TLS, end to end: a real nats-server (the kit's
//! fixture: a container of the locally built image or a local process, as
//! `CACHE_ROUTER_TEST_NATS` chooses) configured by the test, a router, a mock vLLM engine and
//! its worker-reporter logging in to it.
//!
//! - `users_with_role_permissions_...`: an account with a router user and a reporter user for
//!   worker `w-a` limited to `w-a`'s subjects; both log in with `--nats-user/--nats-password`.
//! - `operator_jwts_...`: operator mode (operator, accounts and user JWTs made here, a memory
//!   resolver); both log in with `--nats-creds`, the same permissions carried in the user JWTs.
//! - `mutual_tls_...`: TLS from a CA made here, client certificates verified; both log in with
//!   `--nats-tls-ca`, `--nats-tls-cert` and `--nats-tls-key`.
//!
//! In each, the worker becomes routable, a completion through the router succeeds and the
//! router's index holds exactly the engine's cache. Where permissions apply, the reporter's
//! credentials are then used to speak for another worker, `w-b`: the server refuses its
//! events, registry entry, load report and resync subscription, the router drops an envelope
//! naming `w-b` on `w-a`'s own subject, and neither the event stream, the registry nor the
//! router learns of `w-b`; and a resync request from the router's
//! credentials is answered by the reporter (`allow_responses`). The permission templates below
//! are the ones docs/security.md gives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

use cache_router::RunningRouter;
use cache_router_bus::NatsArgs;
use cache_router_core::protocol::{
    decode_versioned, BlockHash, Body, Envelope, Load, RouterLoad, SyncChunk, SyncRequest,
    WorkerInfo, PROTOCOL_VERSION,
};
use cache_router_testkit::engines::{
    start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::certs::TestCa;
use cache_router_testkit::nats::jwt::Operator;
use cache_router_testkit::nats::permissions::{Permissions, Responses};
use cache_router_testkit::nats::{NatsConf, NatsServer, TempDir};
use cache_router_testkit::traffic::Traffic;
use cache_router_testkit::{assert_eventually, patience, routers, BLOCK_SIZE, MODEL};

/// The fleet's subject prefix (the default).
const PREFIX: &str = "kvr";
/// The worker whose reporter runs.
const WORKER: &str = "w-a";
/// The worker its credentials try to speak for.
const OTHER: &str = "w-b";
/// How long a refused JetStream publish or registry write waits for the ack that never comes.
const NO_ACK_WAIT: Duration = Duration::from_secs(2);

/// The reply-subject prefix (`--nats-inbox-prefix`) a reporter of `worker` uses, so that its
/// permissions can confine it to its own replies.
fn reporter_inbox(worker: &str) -> String {
    format!("_INBOX_{worker}")
}

fn subjects(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The router's permissions (docs/security.md). It owns the fleet's JetStream objects
/// (creates the stream, the registry bucket and the snapshot store, consumes the stream and
/// watches the registry: the JetStream API, and flow-control replies of its push consumers),
/// writes snapshots, asks reporters for resyncs, exchanges load reports with other routers,
/// and reads load reports and replies on its own inbox (`_INBOX`, the default prefix).
fn router_permissions() -> Permissions {
    Permissions {
        publish: subjects(&[
            "$JS.API.>",
            "$JS.FC.>",
            "$O.kvr-snapshots.>",
            "kvr.sync.*",
            "kvr.router-load.*",
        ]),
        subscribe: subjects(&["kvr.load.*", "kvr.router-load.*", "_INBOX.>"]),
        responses: None,
    }
}

/// The permissions of worker `w`'s reporter (docs/security.md): look up the stream, the
/// registry bucket and the snapshot store (not create them), publish its own events, load and
/// registry entry, receive its own resync requests and replies, and answer resync requests
/// (one chunk per 8192 blocks: at most 489 for the reporter's default `--max-mirror-entries`).
fn reporter_permissions(w: &str) -> Permissions {
    Permissions {
        publish: vec![
            format!("kvr.events.{w}"),
            format!("kvr.load.{w}"),
            format!("$KV.kvr-workers.{w}"),
            "$JS.API.STREAM.INFO.KVR_EVENTS".into(),
            "$JS.API.STREAM.INFO.KV_kvr-workers".into(),
            "$JS.API.STREAM.INFO.OBJ_kvr-snapshots".into(),
        ],
        subscribe: vec![format!("kvr.sync.{w}"), format!("{}.>", reporter_inbox(w))],
        responses: Some(Responses {
            max: 500,
            expires: Duration::from_secs(60),
        }),
    }
}

/// How one client logs in: the NATS flags the router and the reporter share, for the router's
/// [`NatsArgs`], the reporter's command line, and a plain async-nats client alike.
#[derive(Clone, Debug, Default)]
struct Login {
    user: Option<(String, String)>,
    creds: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    /// Certificate and key, for mutual TLS.
    tls_client: Option<(PathBuf, PathBuf)>,
    inbox_prefix: Option<String>,
}

impl Login {
    fn apply_to(&self, args: &mut NatsArgs) {
        if let Some((user, password)) = &self.user {
            args.nats_user = Some(user.clone());
            args.nats_password = Some(password.clone());
        }
        args.nats_creds = self.creds.clone();
        args.nats_tls_ca = self.tls_ca.clone();
        if let Some((cert, key)) = &self.tls_client {
            args.nats_tls_cert = Some(cert.clone());
            args.nats_tls_key = Some(key.clone());
        }
        if let Some(prefix) = &self.inbox_prefix {
            args.nats_inbox_prefix = prefix.clone();
        }
    }

    /// The same as command-line flags.
    fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let mut flag = |name: &str, value: String| flags.extend([name.to_owned(), value]);
        if let Some((user, password)) = &self.user {
            flag("--nats-user", user.clone());
            flag("--nats-password", password.clone());
        }
        if let Some(creds) = &self.creds {
            flag("--nats-creds", creds.display().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            flag("--nats-tls-ca", ca.display().to_string());
        }
        if let Some((cert, key)) = &self.tls_client {
            flag("--nats-tls-cert", cert.display().to_string());
            flag("--nats-tls-key", key.display().to_string());
        }
        if let Some(prefix) = &self.inbox_prefix {
            flag("--nats-inbox-prefix", prefix.clone());
        }
        flags
    }

    /// The same for a plain async-nats client (one connection attempt, no retry).
    async fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .expect("a readable credentials file");
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix.clone());
        }
        options
    }
}

/// Connects a plain client as `login`. The errors the server sends it (permission
/// violations) arrive on the returned channel, in the order the server sent them.
async fn connect_as(url: &str, login: &Login) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = login.options().await.event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    });
    let client = options
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{login:?} cannot connect to {url}: {e}"));
    (client, rx)
}

/// Waits for the server's next error to a client and checks that it refuses `what`, e.g.
/// `Publish to "kvr.events.w-b"`.
async fn assert_refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let error = timeout(patience(), errors.recv())
        .await
        .unwrap_or_else(|_| panic!("the server did not refuse {what} within {:?}", patience()))
        .expect("the client is open");
    assert!(
        error.contains("Permissions Violation") && error.contains(what),
        "the server's next error is not a refusal of {what}: {error}"
    );
}

/// The value of the sample `name` (no labels) on the router's `/metrics`.
async fn metric(router: &str, name: &str) -> Option<f64> {
    let text = cache_router_testkit::http_client()
        .get(format!("{router}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A router and a mock engine, and the traffic sent through them. Each test holds the
/// engine's reporter itself (see [`reporter_spec`]): this crate does not depend on
/// `worker-reporter`, so it cannot name the kit's reporter type.
struct Fleet {
    engine: Engine,
    router: RunningRouter,
    traffic: Traffic,
    /// The NATS URL, and how the router logs in (to watch what it publishes).
    url: String,
    router_login: Login,
}

/// The router's id in its load reports.
const ROUTER_ID: &str = "router-a";

/// A reporter for [`WORKER`] logging in as `login`.
fn reporter_spec(login: &Login) -> ReporterSpec {
    ReporterSpec {
        extra_args: login.flags(),
        ..ReporterSpec::new(WORKER)
    }
}

impl Fleet {
    /// Starts a router logging in as `router` and waits until it is ready (the stream, the
    /// registry bucket and the snapshot store exist: a reporter only looks them up), and an
    /// engine.
    async fn start(url: &str, router: &Login) -> Fleet {
        let mut config = routers::nats_router_config(url);
        let nats = config.nats.as_mut().expect("a NATS router");
        nats.router_id = ROUTER_ID.into();
        router.apply_to(&mut nats.nats);
        let router_login = router.clone();
        let router = routers::spawn(config).await;
        timeout(patience(), router.fleet().wait_ready())
            .await
            .expect("the router is ready within patience")
            .expect("the fleet runs");
        let engine = start_engine(EngineSpec::default())
            .await
            .expect("an engine");
        Fleet {
            engine,
            router,
            traffic: Traffic::new(7),
            url: url.to_owned(),
            router_login,
        }
    }

    /// Once the engine's reporter runs: waits until the router registers [`WORKER`] and has
    /// its load reports, sends completions through the router (each must succeed), and waits
    /// until the router's index holds exactly the engine's cache, the router has written a
    /// snapshot of it (the object store) and publishes its own load reports for other routers.
    async fn assert_routable(&mut self) {
        let (watcher, _) = connect_as(&self.url, &self.router_login).await;
        let mut router_loads = watcher
            .subscribe(format!("{PREFIX}.router-load.{ROUTER_ID}"))
            .await
            .unwrap();
        let fleet = self.router.fleet();
        assert_eventually!(
            fleet
                .worker(WORKER)
                .await
                .ok()
                .flatten()
                .is_some_and(|w| w.is_registered()),
            "the router registers {WORKER}"
        );
        assert_eventually!(
            fleet
                .worker(WORKER)
                .await
                .ok()
                .flatten()
                .is_some_and(|w| w.reported_load.is_some()),
            "the router has {WORKER}'s load reports"
        );
        self.traffic.send(self.router.url(), 6).await;
        let want = self.traffic.expected(&self.engine);
        assert!(
            !want.is_empty(),
            "the completions filled the engine's cache"
        );
        assert_eventually!(
            fleet.worker_blocks(WORKER).await.ok().as_ref() == Some(&want),
            "the router's index holds the engine's {} blocks",
            want.len()
        );
        assert_eventually!(
            metric(self.router.url(), "cache_router_snapshots_written_total")
                .await
                .is_some_and(|n| n >= 1.0),
            "the router writes a snapshot"
        );
        let report = timeout(patience(), router_loads.next())
            .await
            .expect("the router publishes its load within patience")
            .expect("the subscription is open");
        let report: RouterLoad = decode_versioned(&report.payload).expect("a router load report");
        assert_eq!(report.router.0, ROUTER_ID);
    }

    /// Stops the engine and the router (the test stops the reporter first).
    async fn stop(self) {
        self.engine.stop().await;
        self.router.stop().await.expect("the router stops cleanly");
    }
}

/// The reporter's credentials (`reporter`, worker [`WORKER`]'s) cannot speak for [`OTHER`]:
/// the server refuses events on OTHER's subject, OTHER's registry entry, OTHER's load and
/// OTHER's resync requests, while they do what a reporter needs (look up the stream and the
/// bucket); an envelope naming OTHER on WORKER's own subject gets through NATS and is dropped
/// by the router. Then, read with the router's credentials (`router`): the stream holds no
/// message on OTHER's subject, the registry has WORKER and not OTHER, and the router, having
/// applied the whole stream, knows nothing of OTHER.
async fn assert_cannot_speak_for_another_worker(
    url: &str,
    reporter: &Login,
    router: &Login,
    fleet: &Fleet,
) {
    let (client, mut refusals) = connect_as(url, reporter).await;
    let js = jetstream::ContextBuilder::new()
        .timeout(NO_ACK_WAIT)
        .build(client.clone());
    js.get_stream("KVR_EVENTS")
        .await
        .expect("a reporter's credentials look up the event stream");
    let registry = js
        .get_key_value("kvr-workers")
        .await
        .expect("a reporter's credentials look up the registry bucket");

    // 1. An event for OTHER on OTHER's subject: refused, so no stream acknowledges it.
    let forged = Envelope::new(
        OTHER.into(),
        1,
        1,
        now_ms(),
        Body::Stored {
            blocks: vec![BlockHash(1)],
            parent: None,
        },
    );
    let ack = js
        .publish(
            format!("{PREFIX}.events.{OTHER}"),
            forged.encode().unwrap().into(),
        )
        .await
        .expect("the publish is sent");
    let err = ack
        .await
        .expect_err("a refused publish is never acknowledged");
    assert_eq!(err.kind(), PublishErrorKind::TimedOut, "{err}");
    assert_refused(
        &mut refusals,
        &format!("Publish to \"{PREFIX}.events.{OTHER}\""),
    )
    .await;

    // 2. OTHER's registry entry, pointing at this engine.
    let info = WorkerInfo {
        id: OTHER.into(),
        url: fleet.engine.url().to_owned(),
        model: MODEL.into(),
        block_size: BLOCK_SIZE as u32,
        epoch: 1,
    };
    let put = registry
        .put(OTHER, serde_json::to_vec(&info).unwrap().into())
        .await;
    assert!(
        put.is_err(),
        "a refused registry write is never acknowledged"
    );
    assert_refused(
        &mut refusals,
        &format!("Publish to \"$KV.kvr-workers.{OTHER}\""),
    )
    .await;

    // 3. OTHER's load.
    let load = Envelope::new(OTHER.into(), 1, 0, now_ms(), Body::Load(Load::default()));
    client
        .publish(
            format!("{PREFIX}.load.{OTHER}"),
            load.encode().unwrap().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_refused(
        &mut refusals,
        &format!("Publish to \"{PREFIX}.load.{OTHER}\""),
    )
    .await;

    // 4. Answering OTHER's resync requests.
    let _sub = client
        .subscribe(format!("{PREFIX}.sync.{OTHER}"))
        .await
        .unwrap();
    assert_refused(
        &mut refusals,
        &format!("Subscription to \"{PREFIX}.sync.{OTHER}\""),
    )
    .await;

    // 5. What the permissions allow, the router checks: OTHER's envelope on WORKER's own
    //    subject is stored, and the router drops it as naming another worker than its subject.
    let mismatches = fleet.router.counters().subject_mismatch();
    let ack = js
        .publish(
            format!("{PREFIX}.events.{WORKER}"),
            forged.encode().unwrap().into(),
        )
        .await
        .expect("the publish is sent")
        .await
        .expect("the reporter's own subject is its to publish on");
    timeout(patience(), fleet.router.fleet().wait_applied(ack.sequence))
        .await
        .expect("the router applies it within patience")
        .unwrap();
    assert_eq!(
        fleet.router.counters().subject_mismatch(),
        mismatches + 1,
        "the router drops an envelope naming {OTHER} on {WORKER}'s subject"
    );
    assert_eq!(
        fleet.router.fleet().worker_blocks(WORKER).await.unwrap(),
        fleet.traffic.expected(&fleet.engine),
        "{WORKER}'s view is untouched"
    );

    // Nothing of OTHER is anywhere, as the router's credentials read it.
    let (admin, _) = connect_as(url, router).await;
    let js = jetstream::new(admin);
    let stream = js.get_stream("KVR_EVENTS").await.unwrap();
    let mut per_subject = stream
        .info_with_subjects(format!("{PREFIX}.events.>"))
        .await
        .unwrap();
    let mut counts = HashMap::new();
    while let Some(entry) = per_subject.next().await {
        let (subject, n) = entry.unwrap();
        counts.insert(subject, n);
    }
    assert!(
        counts
            .get(&format!("{PREFIX}.events.{WORKER}"))
            .is_some_and(|&n| n > 0),
        "the stream holds {WORKER}'s events: {counts:?}"
    );
    assert_eq!(
        counts.get(&format!("{PREFIX}.events.{OTHER}")),
        None,
        "the stream holds no message on {OTHER}'s subject: {counts:?}"
    );
    let kv = js.get_key_value("kvr-workers").await.unwrap();
    assert!(kv.get(WORKER).await.unwrap().is_some());
    assert!(
        kv.get(OTHER).await.unwrap().is_none(),
        "{OTHER} is not registered"
    );
    let last = stream.get_info().await.unwrap().state.last_sequence;
    timeout(patience(), fleet.router.fleet().wait_applied(last))
        .await
        .expect("the router applies the whole stream within patience")
        .unwrap();
    assert!(
        fleet.router.fleet().worker(OTHER).await.unwrap().is_none(),
        "the router knows nothing of {OTHER}"
    );
}

/// A resync request sent with the router's credentials is answered by the reporter (NATS'
/// `allow_responses` lets it reply to the router's inbox) with the engine's cache.
async fn assert_reporter_answers_resync(url: &str, router: &Login, fleet: &Fleet) {
    let (client, _) = connect_as(url, router).await;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let request = rmp_serde::to_vec(&SyncRequest {
        version: PROTOCOL_VERSION,
        worker: WORKER.into(),
    })
    .unwrap();
    client
        .publish_with_reply(format!("{PREFIX}.sync.{WORKER}"), inbox, request.into())
        .await
        .unwrap();
    let mut blocks = Vec::new();
    let mut chunks = 0;
    loop {
        let msg = timeout(patience(), replies.next())
            .await
            .expect("the reporter answers the resync request within patience")
            .expect("the subscription is open");
        let chunk: SyncChunk = decode_versioned(&msg.payload).expect("a resync chunk");
        assert_eq!(chunk.worker.0, WORKER);
        blocks.extend(chunk.entries.iter().map(|(b, _)| *b));
        chunks += 1;
        if chunks == chunk.total {
            break;
        }
    }
    blocks.sort();
    assert_eq!(
        blocks,
        fleet.traffic.expected(&fleet.engine),
        "the resync reply is the engine's cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_role_permissions_route_and_a_reporter_cannot_publish_as_another_worker() {
    let conf = NatsConf::new(format!(
        "accounts {{\n  KVR {{\n    jetstream: enabled\n    users: [\n\
         {{ user: \"router\", password: \"router-secret\", permissions: {} }}\n\
         {{ user: \"{WORKER}\", password: \"{WORKER}-secret\", permissions: {} }}\n\
         ]\n  }}\n}}\n",
        router_permissions().to_conf(),
        reporter_permissions(WORKER).to_conf(),
    ));
    let nats = NatsServer::start_with_config(&conf);
    let router = Login {
        user: Some(("router".into(), "router-secret".into())),
        ..Login::default()
    };
    let reporter = Login {
        user: Some((WORKER.into(), format!("{WORKER}-secret"))),
        inbox_prefix: Some(reporter_inbox(WORKER)),
        ..Login::default()
    };
    let mut fleet = Fleet::start(&nats.url(), &router).await;
    let running = start_reporter(&nats.url(), &fleet.engine, &reporter_spec(&reporter));
    fleet.assert_routable().await;
    assert_reporter_answers_resync(&nats.url(), &router, &fleet).await;
    assert_cannot_speak_for_another_worker(&nats.url(), &reporter, &router, &fleet).await;

    // Without credentials, nobody gets in.
    let anonymous = ConnectOptions::new()
        .connect(nats.url())
        .await
        .expect_err("an anonymous client is refused");
    assert_eq!(
        anonymous.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{anonymous}"
    );
    running.stop().await.expect("the reporter stops cleanly");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_jwts_route_and_a_reporter_cannot_publish_as_another_worker() {
    let operator = Operator::new("KVR");
    let nats = NatsServer::start_with_config(&operator.server_conf());
    let files = TempDir::new("cache-router-creds");
    let router = Login {
        creds: Some(files.write(
            "router.creds",
            operator.user_creds("router", &router_permissions()),
        )),
        ..Login::default()
    };
    let reporter = Login {
        creds: Some(files.write(
            &format!("{WORKER}.creds"),
            operator.user_creds(WORKER, &reporter_permissions(WORKER)),
        )),
        inbox_prefix: Some(reporter_inbox(WORKER)),
        ..Login::default()
    };
    let mut fleet = Fleet::start(&nats.url(), &router).await;
    let running = start_reporter(&nats.url(), &fleet.engine, &reporter_spec(&reporter));
    fleet.assert_routable().await;
    assert_reporter_answers_resync(&nats.url(), &router, &fleet).await;
    assert_cannot_speak_for_another_worker(&nats.url(), &reporter, &router, &fleet).await;

    // A user signed by an account the server does not trust is refused.
    let stranger = Operator::new("KVR");
    let stranger_creds = files.write(
        "stranger.creds",
        stranger.user_creds(WORKER, &reporter_permissions(WORKER)),
    );
    let refused = Login {
        creds: Some(stranger_creds),
        ..Login::default()
    }
    .options()
    .await
    .connect(nats.url())
    .await
    .expect_err("a user of an unknown account is refused");
    assert_eq!(
        refused.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{refused}"
    );
    running.stop().await.expect("the reporter stops cleanly");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_routes_and_a_client_without_the_ca_cannot_connect() {
    let ca = TestCa::new("cache-router test CA");
    let server = ca.server_cert();
    let conf = NatsConf::new(
        "tls {\n  cert_file: \"{dir}/server-cert.pem\"\n  key_file: \"{dir}/server-key.pem\"\n  \
         ca_file: \"{dir}/ca.pem\"\n  verify: true\n  timeout: 5\n}\n",
    )
    .with_file("server-cert.pem", server.cert_pem)
    .with_file("server-key.pem", server.key_pem)
    .with_file("ca.pem", ca.cert_pem());
    let nats = NatsServer::start_with_config(&conf);

    let files = TempDir::new("cache-router-tls");
    let ca_file = files.write("ca.pem", ca.cert_pem());
    let client_login = |name: &str| {
        let cert = ca.client_cert(name);
        Login {
            tls_ca: Some(ca_file.clone()),
            tls_client: Some((
                files.write(&format!("{name}-cert.pem"), cert.cert_pem),
                files.write(&format!("{name}-key.pem"), cert.key_pem),
            )),
            ..Login::default()
        }
    };
    let router = client_login("router");
    let reporter = client_login(WORKER);
    let mut fleet = Fleet::start(&nats.url(), &router).await;
    let running = start_reporter(&nats.url(), &fleet.engine, &reporter_spec(&reporter));
    fleet.assert_routable().await;

    // A client that trusts another CA (with a client certificate of ours) rejects the server.
    let other_ca = TestCa::new("another CA");
    let untrusting = Login {
        tls_ca: Some(files.write("other-ca.pem", other_ca.cert_pem())),
        ..client_login("untrusting")
    };
    let err = untrusting
        .options()
        .await
        .connect(nats.url())
        .await
        .expect_err("a client without our CA does not connect");
    assert!(
        err.to_string().contains("UnknownIssuer"),
        "the client rejects the server's certificate as of an unknown issuer: {err}"
    );

    // A client that trusts the CA but has no client certificate is rejected by the server.
    let anonymous = Login {
        tls_ca: Some(ca_file.clone()),
        ..Login::default()
    };
    let refused = anonymous.options().await.connect(nats.url()).await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    running.stop().await.expect("the reporter stops cleanly");
    fleet.stop().await;
}
