//! HIT / MISS / EVICTION, told as a log of the router's decisions
//! (`cargo bench -p worker-reporter --bench flow`).
//!
//! Three mock vLLM engines (64 KV blocks of 16 tokens each, ZMQ KV events with replay), one
//! `worker-reporter` beside each, a real nats-server, and the router in-process (NATS
//! discovery, cache-aware, speculation off, so every overlap it sees came through the engines'
//! KV events). Then:
//!
//! 1. prompt P through the router: no worker holds any of its blocks, so it is routed by cost
//!    (all costs equal: the policy's tie-break) to some worker X; the engine reports 0 cached
//!    tokens;
//! 2. P again: the router's index now holds P's blocks on X (engine → ZMQ → reporter → NATS →
//!    router), the request goes to X and the engine reports its cached tokens;
//! 3. prompts sent straight to X (not through the router) make X's LRU evict P; the bench waits
//!    (re-checking at every message the router applies or the tap sees, bounded) until the
//!    router's overlap for X is 0 and a NATS tap on `kvr.events.X` has seen P's blocks
//!    removed;
//! 4. two long streaming requests through the router keep two workers busy, and P is sent
//!    again: nobody holds it, so it goes to the idle worker, routed by load.
//!
//! Each step prints the `/route` decision taken just before the request (overlap and cost per
//! worker), the serving worker from `x-cache-router-worker` and the engine's `cached_tokens`,
//! and asserts what the step claims. The run takes a few seconds; small mode (`cargo test`)
//! runs the same steps.

mod support;

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use cache_router::mock::engine_block_hashes;
use cache_router::proxy::WORKER_HEADER;
use cache_router_core::protocol::BlockHash;
use cache_router_testkit::engines::{
    start_engine, start_reporter, Engine, EngineSpec, ReporterSpec,
};
use cache_router_testkit::nats::NatsServer;
use cache_router_testkit::{eventually, http_client, tokenizer, BLOCK_SIZE as BS, MODEL};
use support::{Clock, EventTap, Router};

const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
const NUM_BLOCKS: usize = 64;
/// Blocks of each prompt sent straight to X to make it evict P.
const FILLER_BLOCKS: usize = 40;

/// A few hundred tokens of text (313 with the DeepSeek tokenizer: 19 full blocks of 16).
fn prompt_p() -> String {
    (0..24)
        .map(|i| {
            format!(
                "Section {i} of the handbook explains rule {} in detail. ",
                i * 11 + 5
            )
        })
        .collect()
}

/// Token ids of a prompt that shares no block with anything else sent.
fn fresh_tokens(rng: &mut StdRng, blocks: usize) -> Vec<u32> {
    (0..blocks * BS + 5)
        .map(|_| rng.random_range(1_000..30_000))
        .collect()
}

fn completion(prompt: impl Into<Value>) -> Value {
    json!({"model": MODEL, "prompt": prompt.into(), "max_tokens": 2})
}

/// How many of `hashes` (engine hashes) the engine holds right now.
fn engine_holds(engine: &Engine, hashes: &[u64]) -> usize {
    let cached = engine.mock.engine.cached_hashes();
    hashes
        .iter()
        .filter(|h| cached.binary_search(h).is_ok())
        .count()
}

/// Starts a long streaming completion through the router and reads its first chunk, so the
/// router counts it as decoding on its worker. Dropping the response ends it.
async fn hold_stream(
    http: &reqwest::Client,
    router: &Router,
    tokens: Vec<u32>,
) -> (String, reqwest::Response) {
    let mut resp = http
        .post(format!("{}/v1/completions", router.base))
        .json(&json!({"model": MODEL, "prompt": tokens, "max_tokens": 1_000_000, "stream": true}))
        .send()
        .await
        .expect("streaming completion");
    assert!(resp.status().is_success(), "stream: {}", resp.status());
    let worker = resp
        .headers()
        .get(WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("the router names the serving worker")
        .to_owned();
    let first = resp.chunk().await.expect("first chunk");
    assert!(first.is_some(), "the stream ended before its first chunk");
    (worker, resp)
}

fn main() {
    support::init_tracing();
    let small = support::small_mode();
    println!(
        "flow bench ({} mode): HIT / MISS / EVICTION through the router",
        if small { "small/test" } else { "full" }
    );
    support::runtime().block_on(run());
}

async fn run() {
    let clock = Clock::start();
    let started = Instant::now();
    let nats = NatsServer::start();
    let router = Router::start(&nats.url()).await;
    let mut engines: Vec<(&str, Engine)> = Vec::new();
    for id in WORKERS {
        let spec = EngineSpec {
            num_blocks: NUM_BLOCKS,
            ..EngineSpec::default()
        };
        engines.push((id, start_engine(spec).await.expect("a mock engine starts")));
    }
    // Replay on, 300 ms digests (the kit's reporter defaults).
    let reporters: Vec<_> = engines
        .iter()
        .map(|(id, e)| start_reporter(&nats.url(), e, &ReporterSpec::new(id)))
        .collect();
    let engine = |id: &str| -> &Engine {
        &engines
            .iter()
            .find(|(w, _)| *w == id)
            .expect("a known worker")
            .1
    };
    let http = http_client();
    router.wait_for_workers(&http, WORKERS.len()).await;
    println!(
        "{} setup: {} mock vLLM engines x {NUM_BLOCKS} blocks of {BS} tokens, a reporter each \
         (ZMQ events + replay), nats-server, router (cache-aware, cost = uncached blocks + \
         prefill blocks + decoding requests, speculation off)",
        clock.stamp(),
        WORKERS.len()
    );

    // 1. Cold: nobody holds P.
    let p = prompt_p();
    let body = completion(p.clone());
    let d1 = router.route(&http, &body).await;
    let n = d1.blocks;
    assert!(n >= 10, "P is only {n} blocks");
    assert_eq!(d1.max_overlap(), 0, "a cold index has an overlap: {d1:?}");
    let s1 = router.complete(&http, &body).await;
    let x = s1.worker.clone();
    assert_eq!(s1.cached_tokens, 0, "the first request hit a cache: {s1:?}");
    let equal = d1
        .candidates
        .iter()
        .all(|c| (c.cost - d1.candidates[0].cost).abs() < 1e-9);
    println!(
        "{} MISS      P = {} tokens, {n} full blocks; no worker holds any of them; routed by \
         cost to {x}{}; engine cached_tokens = {}",
        clock.stamp(),
        s1.prompt_tokens,
        if equal {
            " (all costs equal: the policy's seeded tie-break)"
        } else {
            ""
        },
        s1.cached_tokens
    );
    println!("             /route: {}", d1.table());

    // P's blocks reach the index through the engine's KV events.
    let what = format!("the router sees P's blocks on {x}");
    let lag = router
        .wait_until(&what, None, || async {
            router.route(&http, &body).await.overlap(&x) >= n as u32
        })
        .await;
    println!(
        "{} index     {x} holds {n}/{n} of P's blocks in the router's index {:.0} ms after \
         the answer (BlockStored: engine -> ZMQ -> reporter -> NATS -> router)",
        clock.stamp(),
        lag.as_secs_f64() * 1e3
    );

    // 2. Warm: the repeat goes to X and hits its cache.
    let d2 = router.route(&http, &body).await;
    assert_eq!(d2.chosen, x, "the repeat is not routed to {x}: {d2:?}");
    let s2 = router.complete(&http, &body).await;
    assert_eq!(
        s2.worker, x,
        "the repeat was served by {} not {x}",
        s2.worker
    );
    // An engine always computes the last prompt token, so a block-aligned prompt misses its
    // last block.
    let full = n * BS;
    let expect = if full >= s2.prompt_tokens as usize {
        full - BS
    } else {
        full
    };
    assert_eq!(
        s2.cached_tokens as usize, expect,
        "the repeat's cached tokens: {s2:?}"
    );
    println!(
        "{} HIT       {x} holds {n}/{n} blocks; routed by cost to {x}; engine cached_tokens = \
         {} of {} prompt tokens",
        clock.stamp(),
        s2.cached_tokens,
        s2.prompt_tokens
    );
    println!("             /route: {}", d2.table());

    // 3. X evicts P: prompts sent straight to X push P out of its LRU.
    let ex = engine(&x);
    // The engines' tokenizer: the fixture's, as every kit engine loads it.
    let tok = tokenizer::model_tokenizer(MODEL, BS);
    let p_tokens = tok.encode_prompt(&p).expect("tokenize P");
    let p_engine = engine_block_hashes(&p_tokens, BS);
    let mut p_ours = Vec::new();
    tok.block_hashes(&p_tokens, &mut p_ours);
    assert_eq!(p_ours.len(), n, "the router and the engine disagree on P");
    let p_ours: HashSet<BlockHash> = p_ours.into_iter().collect();
    let tap = EventTap::start(&nats.url(), &x).await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut fillers = 0;
    while engine_holds(ex, &p_engine) > 0 {
        assert!(fillers < 20, "{x} still holds P after {fillers} fillers");
        let resp = http
            .post(format!("{}/v1/completions", ex.url()))
            .json(&completion(fresh_tokens(&mut rng, FILLER_BLOCKS)))
            .send()
            .await
            .expect("filler");
        assert!(resp.status().is_success(), "filler: {}", resp.status());
        fillers += 1;
    }
    let evicted = Instant::now();
    println!(
        "{} evict     sent {fillers} prompts of {FILLER_BLOCKS} blocks straight to {x} (not \
         through the router); its LRU evicted all {n} of P's blocks",
        clock.stamp()
    );
    let what = format!("the router stops seeing P on {x} and the tap saw P's blocks removed");
    // The last decision taken while waiting, printed below.
    let d3 = RefCell::new(None);
    router
        .wait_until(&what, Some(&tap), || async {
            let d = router.route(&http, &body).await;
            let done = d.overlap(&x) == 0 && tap.removed(&p_ours).2 >= n;
            *d3.borrow_mut() = Some(d);
            done
        })
        .await;
    let d3 = d3.into_inner().expect("a decision");
    let (msgs, removed, of_p) = tap.removed(&p_ours);
    drop(tap);
    println!(
        "{} EVICTION  {x} evicted P's blocks: {of_p} BlockRemoved events for P ({removed} \
         blocks removed in {msgs} Removed messages on kvr.events.{x}); index overlap for {x} now \
         0, {:.0} ms after the eviction",
        clock.stamp(),
        evicted.elapsed().as_secs_f64() * 1e3
    );
    println!("             /route: {}", d3.table());

    // The engines report their load every 100 ms, so x's last report may still count the
    // fillers as running. Step 4 compares loads: wait until every worker costs just P's
    // uncached blocks again (nothing in flight, nothing reported).
    eventually("the engines' reported load settles", || async {
        let d = router.route(&http, &body).await;
        d.candidates.iter().all(|c| c.cost == n as f64)
    })
    .await;

    // 4. Nobody holds P; two workers are busy with long streams: P goes to the idle one.
    let mut holds = Vec::new();
    for k in 0..2 {
        let (w, resp) = hold_stream(&http, &router, fresh_tokens(&mut rng, 2 + k)).await;
        holds.push((w, resp));
    }
    let busy: Vec<String> = holds.iter().map(|(w, _)| w.clone()).collect();
    assert_ne!(busy[0], busy[1], "both streams went to {}", busy[0]);
    println!(
        "{} load      two long streaming requests through the router now decode on {} and {}",
        clock.stamp(),
        busy[0],
        busy[1]
    );
    let d4 = router.route(&http, &body).await;
    assert_eq!(d4.max_overlap(), 0, "somebody still holds P: {d4:?}");
    let y = d4.chosen.clone();
    assert!(!busy.contains(&y), "P would go to busy {y}: {d4:?}");
    let s4 = router.complete(&http, &body).await;
    assert_eq!(s4.worker, y, "P was served by {} not {y}", s4.worker);
    assert_eq!(
        s4.cached_tokens, 0,
        "P hit a cache after the eviction: {s4:?}"
    );
    let cost = |w: &str| d4.candidate(w).map_or(f64::NAN, |c| c.cost);
    println!(
        "{} MISS      no worker holds P (overlap 0 everywhere); routed by load to {y} (least \
         in flight: cost {:.1} = {n} uncached blocks, vs {:.1} and {:.1} on {} and {}, each \
         decoding a request); engine cached_tokens = {}",
        clock.stamp(),
        cost(&y),
        cost(&busy[0]),
        cost(&busy[1]),
        busy[0],
        busy[1],
        s4.cached_tokens
    );
    println!("             /route: {}", d4.table());
    drop(holds);

    println!(
        "flow: MISS -> HIT -> EVICTION -> MISS by load, as claimed ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    router.stop().await;
    for r in reporters {
        r.stop().await.expect("the reporter stops");
    }
    for (_, e) in engines {
        e.stop().await;
    }
}
