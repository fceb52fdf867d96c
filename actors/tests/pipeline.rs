//! The actor graph with test-double models (the real models are exercised by the `augur`
//! crate's tests): routing, windows, aggregation, deadlines, and the supervisor's restarts.
//! Time is a manual clock: deadlines and backoff pass when a test advances it, never by
//! sleeping. Only the executors' threads run on their own; tests wait for them by yielding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use augur_actors::aggregator::{AggregatorConfig, Method};
use augur_actors::breaker::{BreakerConfig, CircuitState};
use augur_actors::clock::ManualClock;
use augur_actors::executor::{ExecutorConfig, InferenceBackend, ModelError, NoObserver, RowRejected};
use augur_actors::messages::{Barrier, Publish};
use augur_actors::pipeline::{ModelSpec, Pipeline, PipelineConfig};
use augur_actors::router::RouterConfig;
use augur_actors::types::{Ensemble, ModelInfo, StreamKey, Transport, Vector};

/// A stand-in model: probabilities from the mean of its window; can be told to fail or panic.
struct Double {
    len: usize,
    fail: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
    /// While set, a forward pass waits (a model that does not answer).
    hold: Arc<AtomicBool>,
    /// Which load this instance is (1 = the first), and the last load whose forward passes
    /// hang (0: none): a hung instance, while a fresh one works.
    born: usize,
    hang_upto: Arc<AtomicUsize>,
}

impl InferenceBackend for Double {
    fn row_len(&self) -> usize {
        self.len
    }
    fn classes(&self) -> usize {
        3
    }
    fn prepare_into(&self, raw: &[f32], out: &mut Vec<f32>) -> Result<(), RowRejected> {
        out.extend_from_slice(raw);
        Ok(())
    }
    fn forward(&self, rows: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        while self.hold.load(Ordering::SeqCst) || self.born <= self.hang_upto.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("double told to panic");
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(ModelError {
                code: "model_error",
                message: "double told to fail".into(),
            });
        }
        let mut out = Vec::new();
        for r in rows.chunks_exact(self.len).take(n) {
            let m = r.iter().sum::<f32>() / r.len() as f32;
            let p = 1.0 / (1.0 + (-m).exp());
            out.extend_from_slice(&[(1.0 - p) * 0.8, 0.2, p * 0.8]);
        }
        Ok(out)
    }
}

struct Flags {
    fail: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    loads: Arc<AtomicUsize>,
    hang_upto: Arc<AtomicUsize>,
}

fn spec(id: &str, window: usize, timeframes: &[&str]) -> (ModelSpec, Flags) {
    let flags = Flags {
        fail: Arc::default(),
        panic: Arc::default(),
        hold: Arc::default(),
        loads: Arc::default(),
        hang_upto: Arc::default(),
    };
    let (f, p, h, l, hu) = (
        flags.fail.clone(),
        flags.panic.clone(),
        flags.hold.clone(),
        flags.loads.clone(),
        flags.hang_upto.clone(),
    );
    let features = 2;
    let spec = ModelSpec {
        info: ModelInfo {
            id: id.into(),
            version: "1".into(),
            family: "double".into(),
            kind: "test-double".into(),
            window,
            features,
            timeframes: timeframes.iter().map(|s| s.to_string()).collect(),
            device: "cpu".into(),
        },
        factory: Arc::new(move || {
            let born = l.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Box::new(Double {
                len: window * features,
                fail: f.clone(),
                panic: p.clone(),
                hold: h.clone(),
                born,
                hang_upto: hu.clone(),
            }) as Box<dyn InferenceBackend>)
        }),
    };
    (spec, flags)
}

#[derive(Default)]
struct Collector(Arc<Mutex<Vec<Arc<Ensemble>>>>);

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<Publish> for Collector {
    type Result = ();
    fn handle(&mut self, Publish(e): Publish, _: &mut Context<Self>) {
        self.0.lock().unwrap().push(e);
    }
}

impl Handler<Barrier> for Collector {
    type Result = ();
    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) {}
}

fn vector(sym: &str, tf: &str, seq: u64, x: f32) -> Vector {
    Vector {
        key: StreamKey::new(sym, tf),
        sequence: seq,
        event_time_ms: seq as i64 * 1000,
        values: Arc::from(vec![x, -x]),
        correlation_id: format!("{sym}-{tf}-{seq}").into(),
        published_at_ns: 0,
        transport: Transport::REPLAY,
        late_ms: 0,
        refill: false,
        close: None,
        ack: None,
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        router: RouterConfig {
            dedupe_capacity: 10_000,
            max_streams: 100,
            model_mailbox: 1024,
        },
        executor: ExecutorConfig {
            max_batch: 16,
            max_delay_us: 100,
            queue_capacity: 4096,
            forward_timeout_ms: 0,
            explain_top_k: 0,
        },
        breaker: BreakerConfig {
            consecutive_failures: 3,
            backoff_initial_ms: 50,
            backoff_max_ms: 200,
            backoff_jitter: 0.0,
            half_open_probes: 2,
            max_restarts: 3,
            restart_window_ms: 60_000,
            ..Default::default()
        },
        aggregator: AggregatorConfig {
            deadline_ms: 2_000,
            method: Method::WeightedMean,
            ..Default::default()
        },
        adaptive: Default::default(),
    }
}

/// What the sink received.
struct Out {
    items: Arc<Mutex<Vec<Arc<Ensemble>>>>,
    sink: Addr<Collector>,
}

impl Out {
    /// Every prediction published so far (the sink has handled its mailbox).
    async fn get(&self) -> Vec<Arc<Ensemble>> {
        self.sink.send(Barrier).await.unwrap();
        self.items.lock().unwrap().clone()
    }
}

async fn start(members: Vec<ModelSpec>, cfg: PipelineConfig) -> (Pipeline, Out, Arc<ManualClock>) {
    let items = Arc::new(Mutex::new(Vec::new()));
    let sink = Collector(items.clone()).start();
    let clock = ManualClock::shared();
    let p = Pipeline::start(
        cfg,
        members,
        None,
        vec![sink.clone().recipient()].into(),
        clock.clone(),
        Arc::new(NoObserver),
    )
    .await
    .unwrap();
    (p, Out { items, sink }, clock)
}

/// Yields to the actors (and lets the executor threads work) until `cond` holds; no sleeping.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        actix_rt::task::yield_now().await;
    }
}

#[actix_rt::test]
async fn test_one_prediction_per_vector_once_every_window_is_full() {
    let (a, _) = spec("a", 3, &["1m", "5m"]);
    let (b, _) = spec("b", 5, &["1m", "5m"]);
    let (c, _) = spec("c", 1, &["5m"]);
    let (p, out, _clock) = start(vec![a, b, c], config()).await;
    for seq in 1..=20u64 {
        let mut batch = Vec::new();
        for sym in ["AAA", "BBB"] {
            for tf in ["1m", "5m"] {
                batch.push(vector(sym, tf, seq, seq as f32 / 10.0));
            }
        }
        p.ingest(batch).await.unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    let out = out.get().await;
    // windows: 5 is the longest, so sequences 5..=20 give predictions: 16 per stream, 4 streams
    assert_eq!(out.len(), 64);
    for e in out.iter() {
        assert!(e.sequence >= 5);
        let expected = if &*e.timeframe == "5m" { 3 } else { 2 };
        assert_eq!((e.models_expected, e.models_used), (expected, expected));
        assert_eq!(
            e.correlation_id.as_ref(),
            format!("{}-{}-{}", e.symbol, e.timeframe, e.sequence)
        );
        assert!((e.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let mut keys: Vec<_> = out
        .iter()
        .map(|e| (e.symbol.to_string(), e.timeframe.to_string(), e.sequence))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 64, "no duplicates");
}

#[actix_rt::test]
async fn test_repeated_or_older_sequences_are_dropped_and_counted() {
    let (a, _) = spec("a", 1, &["1m"]);
    let (p, out, _clock) = start(vec![a], config()).await;
    for seq in [1u64, 2, 2, 1, 5, 3] {
        p.ingest(vec![vector("AAA", "1m", seq, 0.1)]).await.unwrap();
    }
    assert!(p.drain(Duration::from_secs(5)).await);
    assert_eq!(out.get().await.len(), 3, "1, 2 and 5");
    assert_eq!(
        p.stats.duplicates.load(Ordering::Relaxed),
        2,
        "2 and 1 again: seen before"
    );
    assert_eq!(
        p.stats.stale_sequence.load(Ordering::Relaxed),
        1,
        "3 after 5: older, never seen"
    );
}

#[actix_rt::test]
async fn test_at_the_stream_cap_the_least_recently_active_stream_makes_room() {
    let (a, _) = spec("a", 1, &["1m"]);
    let mut cfg = config();
    cfg.router.max_streams = 2;
    let (p, out, _clock) = start(vec![a], cfg).await;
    // A, B; A again (B is now the least recent); C evicts B; B comes back and evicts A.
    for (sym, seq) in [("A", 1), ("B", 1), ("A", 2), ("C", 1), ("B", 2)] {
        p.ingest(vec![vector(sym, "1m", seq, 0.1)]).await.unwrap();
        assert!(p.drain(Duration::from_secs(5)).await);
    }
    let got: Vec<(String, u64)> = out
        .get()
        .await
        .iter()
        .map(|e| (e.symbol.to_string(), e.sequence))
        .collect();
    assert_eq!(got.len(), 5, "a new stream is never locked out: {got:?}");
    assert_eq!(p.stats.streams_evicted.load(Ordering::Relaxed), 2);
    assert_eq!(p.stats.active_streams.load(Ordering::Relaxed), 2);
}

#[actix_rt::test]
async fn test_a_flood_of_one_vector_streams_cannot_lock_out_a_real_one() {
    let (a, _) = spec("a", 1, &["1m"]);
    let mut cfg = config();
    cfg.router.max_streams = 100;
    let (p, out, _clock) = start(vec![a], cfg).await;
    for i in 0..1_000 {
        p.ingest(vec![vector(&format!("RND{i}"), "1m", 1, 0.1)])
            .await
            .unwrap();
    }
    p.ingest(vec![vector("REAL", "1m", 1, 0.1)]).await.unwrap();
    assert!(p.drain(Duration::from_secs(10)).await);
    assert!(out.get().await.iter().any(|e| &*e.symbol == "REAL"));
    assert_eq!(p.stats.active_streams.load(Ordering::Relaxed), 100);
}

async fn feed(p: &Pipeline, from: u64, to: u64) {
    for seq in from..to {
        p.ingest(vec![vector("AAA", "1m", seq, 0.3)]).await.unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
}

#[actix_rt::test]
async fn test_a_panicking_model_is_restarted_with_a_fresh_executor_while_others_go_on() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (good, _) = spec("good", 1, &["1m"]);
    let (bad, bad_flags) = spec("bad", 1, &["1m"]);
    let (p, out, clock) = start(vec![good, bad], config()).await;
    feed(&p, 1, 6).await;
    bad_flags.panic.store(true, Ordering::SeqCst);
    feed(&p, 6, 20).await;
    let bad_gate = &p.gates[1];
    assert_eq!(
        bad_gate.state(),
        CircuitState::Open,
        "the panic opened the circuit"
    );
    let during = out.get().await.iter().filter(|e| e.sequence >= 6).count();
    assert_eq!(during, 14, "the good model kept every event going");
    assert_eq!(
        bad_gate.restarts.load(Ordering::Relaxed),
        0,
        "no restart before the backoff"
    );
    // heal; once the backoff has passed on the clock the supervisor reloads the model
    bad_flags.panic.store(false, Ordering::SeqCst);
    let loads_before = bad_flags.loads.load(Ordering::SeqCst);
    until("the supervisor's backoff timer", || clock.pending_timers() == 1).await;
    clock.advance(Duration::from_millis(200));
    until("the restart", || bad_gate.restarts.load(Ordering::Relaxed) == 1).await;
    until("the fresh executor", || bad_gate.executor().is_ready()).await;
    assert!(
        bad_flags.loads.load(Ordering::SeqCst) > loads_before,
        "a fresh executor reloaded the model"
    );
    // probes (half_open_probes = 2), one event at a time, close the circuit
    for seq in 20..23 {
        feed(&p, seq, seq + 1).await;
    }
    assert_eq!(bad_gate.state(), CircuitState::Closed);
    let last = out.get().await.last().cloned().unwrap();
    assert_eq!(last.models_used, 2, "both members are back");
}

#[actix_rt::test]
async fn test_restart_intensity_parks_a_failing_model_until_reset() {
    let (good, _) = spec("good", 1, &["1m"]);
    let (bad, bad_flags) = spec("bad", 1, &["1m"]);
    let mut cfg = config();
    cfg.breaker.max_restarts = 1;
    let (p, _out, clock) = start(vec![good, bad], cfg).await;
    bad_flags.fail.store(true, Ordering::SeqCst);
    let gate = &p.gates[1];
    // fail until open, wait out the backoff, probe and fail again: the second restart parks it
    let mut seq = 1;
    for round in 1..=2u64 {
        while gate.state() != CircuitState::Open {
            feed(&p, seq, seq + 1).await;
            seq += 1;
        }
        until("the supervisor's backoff timer", || clock.pending_timers() == 1).await;
        clock.advance(Duration::from_millis(200));
        until("the supervisor's restart", || {
            gate.restarts.load(Ordering::Relaxed) == round
        })
        .await;
        if round == 1 {
            assert_eq!(gate.state(), CircuitState::Open, "restarted, waiting for a probe");
            feed(&p, seq, seq + 1).await;
            seq += 1;
        }
    }
    assert_eq!(gate.state(), CircuitState::Faulted);
    bad_flags.fail.store(false, Ordering::SeqCst);
    p.reset_model("bad").await.unwrap();
    assert_eq!(gate.state(), CircuitState::Closed);
    assert!(p.reset_model("nope").await.is_err());
}

#[actix_rt::test]
async fn test_an_event_is_published_at_its_deadline_with_the_members_that_answered() {
    let (fast, _) = spec("fast", 1, &["1m"]);
    let (stuck, stuck_flags) = spec("stuck", 1, &["1m"]);
    let (p, out, clock) = start(vec![fast, stuck], config()).await;
    stuck_flags.hold.store(true, Ordering::SeqCst);
    p.ingest(vec![vector("AAA", "1m", 1, 0.5)]).await.unwrap();
    until("the fast member's answer", || {
        p.gates[0].calls.load(Ordering::Relaxed) == 1
    })
    .await;
    for _ in 0..1000 {
        actix_rt::task::yield_now().await;
    }
    assert!(
        out.get().await.is_empty() && !p.stats.idle(),
        "the event waits for its second member"
    );
    // deadline_ms = 2000: one millisecond short of it nothing happens
    clock.advance(Duration::from_millis(1_999));
    for _ in 0..1000 {
        actix_rt::task::yield_now().await;
    }
    assert!(out.get().await.is_empty() && !p.stats.idle());
    clock.advance(Duration::from_millis(1));
    assert!(p.drain(Duration::from_secs(5)).await);
    let e = out.get().await[0].clone();
    assert_eq!((e.models_expected, e.models_used), (2, 1));
    assert_eq!(&*e.members[0].model_id, "fast");
    assert_eq!(p.stats.deadline_misses.load(Ordering::Relaxed), 1);
    stuck_flags.hold.store(false, Ordering::SeqCst);
}

#[actix_rt::test]
async fn test_a_full_executor_queue_sheds_load_without_tripping_the_breaker() {
    let (m, flags) = spec("m", 1, &["1m"]);
    let mut cfg = config();
    cfg.executor.queue_capacity = 1;
    cfg.executor.max_batch = 1;
    let (p, _out, _clock) = start(vec![m], cfg).await;
    flags.hold.store(true, Ordering::SeqCst);
    for i in 0..20 {
        p.ingest(vec![vector(&format!("S{i}"), "1m", 1, 0.1)])
            .await
            .unwrap();
    }
    until("calls shed by the full queue", || {
        p.stats.shed_calls.load(Ordering::Relaxed) >= 10
    })
    .await;
    flags.hold.store(false, Ordering::SeqCst);
    assert!(p.drain(Duration::from_secs(10)).await);
    assert_eq!(
        p.gates[0].state(),
        CircuitState::Closed,
        "shedding under load is not a model fault"
    );
    assert_eq!(p.stats.failed_calls.load(Ordering::Relaxed), 0);
}

#[actix_rt::test]
async fn test_a_restart_keeps_the_streams_windows() {
    let (good, _) = spec("good", 3, &["1m"]);
    let (bad, bad_flags) = spec("bad", 3, &["1m"]);
    let (p, out, clock) = start(vec![good, bad], config()).await;
    feed(&p, 1, 6).await;
    bad_flags.fail.store(true, Ordering::SeqCst);
    let mut seq = 6;
    while p.gates[1].state() != CircuitState::Open {
        feed(&p, seq, seq + 1).await;
        seq += 1;
    }
    bad_flags.fail.store(false, Ordering::SeqCst);
    until("the supervisor's backoff timer", || clock.pending_timers() == 1).await;
    clock.advance(Duration::from_millis(200));
    until("the restart", || p.gates[1].restarts.load(Ordering::Relaxed) == 1).await;
    let before = out.get().await.len();
    // The windows are the stream's features, not the model's state: the next event after
    // the restart is predicted by both members at once, none of them warming up again.
    for s in seq..seq + 3 {
        feed(&p, s, s + 1).await;
    }
    let after = out.get().await;
    assert_eq!(after.len() - before, 3, "no event warming after the restart");
    assert_eq!(after.last().unwrap().models_used, 2);
}

/// A transport's completion that records when it was released.
struct Released(Arc<AtomicBool>);

impl augur_actors::types::Completion for Released {}

impl Drop for Released {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[actix_rt::test]
async fn test_a_duplicate_is_released_only_once_the_first_copys_prediction_is_delivered() {
    // NATS brings sequence 1 first (no ack); Kafka's copy of it (with an ack) is a duplicate.
    // Its offset may be committed only once the prediction the NATS copy made is delivered
    // (the sink holds it): else a crash loses that prediction on Kafka.
    let (a, _) = spec("a", 1, &["1m"]);
    let (p, out, _clock) = start(vec![a], config()).await;
    p.ingest(vec![vector("AAA", "1m", 1, 0.1)]).await.unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let mut dup = vector("AAA", "1m", 1, 0.1);
    dup.ack = Some(augur_actors::types::Ack(Arc::new(Released(released.clone()))));
    p.ingest(vec![dup]).await.unwrap();
    assert!(p.drain(Duration::from_secs(5)).await);
    assert_eq!(out.get().await.len(), 1);
    assert_eq!(p.stats.duplicates.load(Ordering::Relaxed), 1);
    assert!(
        !released.load(Ordering::SeqCst),
        "the duplicate was released while its prediction was still held by the sink"
    );
    out.items.lock().unwrap().clear(); // the sink delivered it
    assert!(released.load(Ordering::SeqCst));
}

#[actix_rt::test]
async fn test_a_hung_forward_is_replaced_by_a_fresh_executor_while_others_go_on() {
    // A forward pass that never returns kept the executor "up": restarts only replaced dead
    // executors, so the model answered nothing again until the process restarted.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (good, _) = spec("good", 1, &["1m"]);
    let (stuck, flags) = spec("stuck", 1, &["1m"]);
    let mut cfg = config();
    cfg.executor.forward_timeout_ms = 1_000;
    let (p, out, clock) = start(vec![good, stuck], cfg).await;
    feed(&p, 1, 3).await;
    let gate = &p.gates[1];
    flags
        .hang_upto
        .store(flags.loads.load(Ordering::SeqCst), Ordering::SeqCst);
    p.ingest(vec![vector("AAA", "1m", 3, 0.3)]).await.unwrap();
    until("the stuck forward pass", || {
        gate.executor().state().forward_started_ns.load(Ordering::SeqCst) > 0
    })
    .await;
    let loads = flags.loads.load(Ordering::SeqCst);
    // past the forward timeout: the watchdog gives up on the executor and opens the circuit
    clock.advance(Duration::from_millis(1_500));
    until("the hung executor given up", || {
        gate.state() == CircuitState::Open
    })
    .await;
    // after the backoff (50 ms) the supervisor starts a fresh executor (the old thread is left
    // behind); time moves in small steps, each one given to the actors
    for _ in 0..200 {
        if flags.loads.load(Ordering::SeqCst) > loads {
            break;
        }
        clock.advance(Duration::from_millis(10));
        for _ in 0..10 {
            actix_rt::task::yield_now().await;
        }
    }
    until("a fresh executor", || flags.loads.load(Ordering::SeqCst) > loads).await;
    until("ready", || gate.executor().is_ready()).await;
    // event 3 waited on the hung call: its deadline publishes it with the member that answered.
    // Time moves until it is out: when the good member's answer (a real thread) came after the
    // first deadline, that deadline found no member and gave the event another one.
    let mut drained = false;
    for _ in 0..5 {
        clock.advance(Duration::from_millis(2_000));
        if p.drain(Duration::from_secs(2)).await {
            drained = true;
            break;
        }
    }
    assert!(drained, "event 3 was never published");
    let third = out.get().await.into_iter().find(|e| e.sequence == 3).unwrap();
    assert_eq!(third.models_used, 1);
    for seq in 4..8 {
        feed(&p, seq, seq + 1).await;
    }
    let last = out.get().await.last().cloned().unwrap();
    assert_eq!(last.sequence, 7);
    assert_eq!(last.models_used, 2, "the stuck model answers again");
    flags.hang_upto.store(0, Ordering::SeqCst); // let the abandoned thread end
}

#[actix_rt::test]
async fn test_a_late_copy_past_the_dedupe_memory_still_waits_for_the_first_copys_prediction() {
    // The Kafka copy may lag NATS by more than the dedupe LRU holds: it is then an "older
    // sequence", and its completion must still wait for the prediction made from the NATS copy.
    let (a, _) = spec("a", 1, &["1m"]);
    let mut cfg = config();
    cfg.router.dedupe_capacity = 1;
    let (p, out, _clock) = start(vec![a], cfg).await;
    p.ingest(vec![vector("AAA", "1m", 1, 0.1)]).await.unwrap();
    p.ingest(vec![vector("AAA", "1m", 2, 0.1)]).await.unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let mut late = vector("AAA", "1m", 1, 0.1);
    late.ack = Some(augur_actors::types::Ack(Arc::new(Released(released.clone()))));
    p.ingest(vec![late]).await.unwrap();
    assert!(p.drain(Duration::from_secs(5)).await);
    assert_eq!(out.get().await.len(), 2);
    assert!(
        !released.load(Ordering::SeqCst),
        "released while the first copy's prediction was still held by the sink"
    );
    out.items.lock().unwrap().clear();
    assert!(released.load(Ordering::SeqCst));
}

#[actix_rt::test]
async fn test_a_gap_in_a_stream_is_counted_and_the_late_vector_that_fills_it_is_counted_not_predicted() {
    // NATS dropped sequence 3 (slow consumer) and delivered 4; Kafka's copy of 3 comes later.
    let (a, _) = spec("a", 1, &["1m"]);
    let (p, out, _clock) = start(vec![a], config()).await;
    for seq in [1u64, 2, 4, 3, 9] {
        p.ingest(vec![vector("AAA", "1m", seq, 0.1)]).await.unwrap();
    }
    assert!(p.drain(Duration::from_secs(5)).await);
    let mut got: Vec<u64> = out.get().await.iter().map(|e| e.sequence).collect();
    got.sort_unstable(); // events of a stream may finish in any order
    assert_eq!(got, vec![1, 2, 4, 9]);
    assert_eq!(
        p.stats.sequence_gaps.load(Ordering::Relaxed),
        5,
        "3, then 5 to 8, missing"
    );
    assert_eq!(
        p.stats.stale_sequence.load(Ordering::Relaxed),
        1,
        "3 came too late"
    );
}

/// History re-read after a hand-over fills windows and predicts nothing; the first live vector
/// after it predicts from a complete window, equal to what an instance that saw the whole
/// stream predicts. A released stream's state is gone: its next vector starts a new window.
#[actix_rt::test]
async fn test_refill_rebuilds_windows_without_predicting_and_release_drops_them() {
    let refill = |mut v: Vector| {
        v.refill = true;
        v
    };
    // One instance that saw the whole stream.
    let (a, _) = spec("a", 4, &["1m"]);
    let (whole, whole_out, _c1) = start(vec![a], config()).await;
    for seq in 1..=8u64 {
        whole
            .ingest(vec![vector("AAA", "1m", seq, seq as f32 / 7.0)])
            .await
            .unwrap();
    }
    assert!(whole.drain(Duration::from_secs(10)).await);
    let whole_out = whole_out.get().await;
    // Another that takes the stream over at 6: 3..=5 re-read as history, then 6..=8 live.
    let (a, _) = spec("a", 4, &["1m"]);
    let (p, out, _c2) = start(vec![a], config()).await;
    for seq in 3..=5u64 {
        p.ingest(vec![refill(vector("AAA", "1m", seq, seq as f32 / 7.0))])
            .await
            .unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    assert!(out.get().await.is_empty(), "history predicts nothing");
    // A live copy of a refilled vector is a duplicate: it was predicted before.
    p.ingest(vec![vector("AAA", "1m", 5, 5.0 / 7.0)]).await.unwrap();
    for seq in 6..=8u64 {
        p.ingest(vec![vector("AAA", "1m", seq, seq as f32 / 7.0)])
            .await
            .unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    let got = out.get().await;
    assert_eq!(got.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![6, 7, 8]);
    for e in &got {
        let w = whole_out.iter().find(|w| w.sequence == e.sequence).unwrap();
        assert_eq!(e.probabilities, w.probabilities, "sequence {}", e.sequence);
    }
    // Released: the state is dropped, so 9..=11 only warm a new window.
    p.release(vec![StreamKey::new("AAA", "1m")]);
    until("the stream released", || p.active_streams() == 0).await;
    for seq in 9..=11u64 {
        p.ingest(vec![vector("AAA", "1m", seq, seq as f32 / 7.0)])
            .await
            .unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    assert_eq!(out.get().await.len(), 3, "a released stream starts a new window");
}

/// A stream released and taken back (its partition moved away and returned before the other
/// owner got far): what the new incarnation re-reads past its mark is live input again, not a
/// duplicate of what the old incarnation routed, and it is predicted from a complete window,
/// equal to the first time.
#[actix_rt::test]
async fn test_a_stream_taken_back_after_a_release_predicts_its_re_read_input_again() {
    let (a, _) = spec("a", 4, &["1m"]);
    let (p, out, _clock) = start(vec![a], config()).await;
    for seq in 1..=10u64 {
        p.ingest(vec![vector("AAA", "1m", seq, seq as f32 / 7.0)])
            .await
            .unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    let first = out.get().await;
    assert_eq!(first.len(), 7, "4..=10");
    p.release(vec![StreamKey::new("AAA", "1m")]);
    until("the stream released", || p.active_streams() == 0).await;
    // Back: history up to the mark (5) refills, 6..=10 are live again.
    for seq in 2..=5u64 {
        let mut v = vector("AAA", "1m", seq, seq as f32 / 7.0);
        v.refill = true;
        p.ingest(vec![v]).await.unwrap();
    }
    for seq in 6..=10u64 {
        p.ingest(vec![vector("AAA", "1m", seq, seq as f32 / 7.0)])
            .await
            .unwrap();
    }
    assert!(p.drain(Duration::from_secs(10)).await);
    let again: Vec<_> = out.get().await.into_iter().skip(first.len()).collect();
    assert_eq!(
        again.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![6, 7, 8, 9, 10]
    );
    for e in &again {
        let f = first.iter().find(|f| f.sequence == e.sequence).unwrap();
        assert_eq!(e.probabilities, f.probabilities, "sequence {}", e.sequence);
    }
}
