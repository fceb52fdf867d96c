//! End to end through a real nats-server: predictions out for every vector whose windows are
//! full, invalid input on the dead-letter subject with its reason, replay equal to serve, and a
//! clean exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use augur_service::pb;
use augur_service::service::{ServeReport, replay, serve};
use futures::StreamExt;
use prost::Message;

/// The first `n` vectors of each of several real series, plus AAPL relabelled onto "5m": six
/// streams over three timeframes.
fn vectors(n: usize) -> Vec<pb::FeatureVector> {
    let file = std::fs::read(common::root().join("models/data/replay/ta-v1.pb")).unwrap();
    let all = augur_tools::publish::interleave(&file).unwrap();
    let mut per: BTreeMap<(String, String), Vec<pb::FeatureVector>> = BTreeMap::new();
    for v in all {
        per.entry((v.symbol.clone(), v.timeframe.clone()))
            .or_default()
            .push(v);
    }
    let mut streams: Vec<Vec<pb::FeatureVector>> = Vec::new();
    for sym in ["AAPL", "IBM", "MSFT", "GOOG", "EURUSD"] {
        let s = per.iter().find(|((s, _), _)| s == sym).unwrap().1;
        streams.push(s[..n].to_vec());
    }
    let relabelled = streams[0].iter().cloned().map(|mut v| {
        v.timeframe = "5m".into();
        v.correlation_id = format!("AAPL-5m-{}", v.sequence);
        v
    });
    streams.push(relabelled.collect());
    let mut out = Vec::new();
    for i in 0..n {
        for s in &streams {
            out.push(s[i].clone());
        }
    }
    out
}

fn stamp(mut v: pb::FeatureVector) -> pb::FeatureVector {
    let now = augur_actors::clock::unix_ns();
    v.event_time_ms = now / 1_000_000;
    v.published_at_ns = now;
    v
}

fn bad(values: Vec<f32>, set: &str, tf: &str) -> Vec<u8> {
    let v = stamp(pb::FeatureVector {
        symbol: "ZZZ".into(),
        timeframe: tf.into(),
        sequence: 1,
        feature_set: set.into(),
        values,
        ..Default::default()
    });
    pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec()
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<ServeReport>>,
}

fn start_service(cfg: augur_service::config::Config) -> Running {
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(serve(
            cfg,
            async {
                let _ = stop_rx.await;
            },
            None,
            Some(ready_tx),
        ))
    });
    ready_rx.blocking_recv().expect("service became ready");
    Running { stop, thread }
}

#[test]
fn test_end_to_end_on_nats_with_dead_letters_and_replay_equal_to_serve() {
    let nats = common::NatsServer::start();
    let mut cfg = common::config(&nats.url());
    cfg.aggregator.deadline_ms = 10_000;
    let svc = start_service(cfg.clone());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = 60;
    let good: Vec<pb::FeatureVector> = vectors(n).into_iter().map(stamp).collect();
    let streams = 6;
    let expected_predictions = streams * (n - 31); // the 32-vector windows are full from the 32nd
    let bad_msgs: Vec<(&str, Vec<u8>, &str)> = vec![
        ("features.1d.ZZZ", vec![0xff, 0x01, 0x02, 0x03], "decode_error"),
        (
            "features.1d.ZZZ",
            bad(vec![f32::NAN; 20], "ta-v1", "1d"),
            "non_finite_value",
        ),
        (
            "features.1d.ZZZ",
            bad(vec![0.0; 19], "ta-v1", "1d"),
            "wrong_feature_count",
        ),
        (
            "features.1d.ZZZ",
            bad(vec![0.0; 20], "ta-v9", "1d"),
            "unknown_feature_set",
        ),
        (
            "features.1d.ZZZ",
            bad(vec![0.0; 20], "ta-v1", "1h"),
            "timeframe_mismatch",
        ),
    ];
    let (preds, dlq) = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut out = client.subscribe("predictions.>").await.unwrap();
        let mut dead = client.subscribe("features.dlq").await.unwrap();
        client.flush().await.unwrap();
        for (i, v) in good.iter().enumerate() {
            let subject = format!("features.{}.{}", v.timeframe, v.symbol);
            let payload = pb::FeatureVectorBatch {
                vectors: vec![v.clone()],
            }
            .encode_to_vec();
            client.publish(subject, payload.into()).await.unwrap();
            // the bad messages go out in the middle of the stream
            if i == good.len() / 2 {
                for (s, p, _) in &bad_msgs {
                    client.publish(s.to_string(), p.clone().into()).await.unwrap();
                }
            }
        }
        client.flush().await.unwrap();
        let mut preds = Vec::new();
        let mut dlq = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (preds.len() < expected_predictions || dlq.len() < bad_msgs.len()) && Instant::now() < deadline
        {
            tokio::select! {
                Some(m) = out.next() => preds.push(pb::EnsemblePrediction::decode(m.payload).unwrap()),
                Some(m) = dead.next() => dlq.push(m),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        // anything extra would arrive now
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            tokio::select! {
                Some(m) = out.next() => preds.push(pb::EnsemblePrediction::decode(m.payload).unwrap()),
                Some(m) = dead.next() => dlq.push(m),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        (preds, dlq)
    });
    let _ = svc.stop.send(());
    let report = svc.thread.join().unwrap().unwrap();

    // exactly one prediction per vector with full windows, each with every member
    assert_eq!(preds.len(), expected_predictions, "zero lost, zero extra");
    let mut seen = HashMap::new();
    for p in &preds {
        assert!(
            p.sequence >= 81,
            "{} {} #{} before its windows were full",
            p.symbol,
            p.timeframe,
            p.sequence
        );
        assert_eq!((p.models_expected, p.models_used), (3, 3), "{p:?}");
        assert_eq!(p.members.len(), 3);
        assert_eq!(
            p.correlation_id,
            format!("{}-{}-{}", p.symbol, p.timeframe, p.sequence)
        );
        assert!(p.feature_published_at_ns > 0 && p.published_at_ns >= p.feature_published_at_ns);
        assert_eq!(p.service_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(p.method, "weighted_mean");
        let d = pb::Direction::try_from(p.direction).unwrap();
        let want_signal = match d {
            pb::Direction::Short => -1,
            pb::Direction::Long => 1,
            _ => 0,
        };
        assert_eq!(p.signal, want_signal);
        assert!(
            seen.insert((p.symbol.clone(), p.timeframe.clone(), p.sequence), p.clone())
                .is_none(),
            "duplicate"
        );
    }
    let timeframes: std::collections::BTreeSet<_> = preds.iter().map(|p| p.timeframe.clone()).collect();
    assert_eq!(timeframes.len(), 3);

    // each invalid message once on the DLQ, payload byte for byte, reason in the headers, counted
    assert_eq!(dlq.len(), bad_msgs.len());
    for (_, payload, reason) in &bad_msgs {
        let m = dlq
            .iter()
            .find(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("Augur-Reason"))
                    .map(|v| v.as_str())
                    == Some(*reason)
            })
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}"));
        assert_eq!(
            &m.payload[..],
            &payload[..],
            "{reason}: payload kept byte for byte"
        );
        let h = m.headers.as_ref().unwrap();
        assert!(!h.get("Augur-Detail").unwrap().as_str().is_empty());
        assert_eq!(h.get("Augur-Source").unwrap().as_str(), "features.1d.ZZZ");
        assert_eq!(
            report.dead_letters.get(&format!("nats:{reason}")),
            Some(&1),
            "{reason} counted once"
        );
    }
    assert!(report.drained);

    // replay of the same recorded stream gives the same predictions
    let mut file = Vec::new();
    for v in &good {
        pb::FeatureVectorBatch {
            vectors: vec![v.clone()],
        }
        .encode_length_delimited(&mut file)
        .unwrap();
    }
    let out = actix_rt::System::new().block_on(replay(&cfg, &file)).unwrap();
    assert_eq!(out.predictions.len(), preds.len());
    for r in &out.predictions {
        let s = &seen[&(r.symbol.to_string(), r.timeframe.to_string(), r.sequence)];
        assert_eq!(r.event_id, s.event_id, "same event, same id");
        for (a, b) in r.probabilities.iter().zip(&s.probabilities) {
            assert!((a - b).abs() <= 1e-6, "ensemble {a} vs {b}");
        }
        for m in &r.members {
            let sm = s.members.iter().find(|x| x.model_id == *m.model_id).unwrap();
            for (a, b) in m.probabilities.iter().zip(&sm.probabilities) {
                assert!((a - b).abs() <= 1e-6, "{} {a} vs {b}", m.model_id);
            }
        }
    }
}

#[test]
fn test_the_binary_exits_cleanly_on_sigterm() {
    let nats = common::NatsServer::start();
    let (mut child, rx) = common::spawn_ready(&[("AUGUR_NATS__URL", &nats.url())]);
    common::sigterm(&child);
    let code = child.wait().unwrap();
    assert!(code.success(), "exit status {code:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("augur stopped")), "{rest:?}");
}

#[test]
fn test_sigterm_with_nats_gone_exits_within_the_shutdown_budget() {
    // Seen before: SIGTERM while nats-server was stopping left the process running for over
    // a minute with a 10 s budget.
    let mut nats = common::NatsServer::start();
    let (mut child, _rx) = common::spawn_ready(&[
        ("AUGUR_NATS__URL", &nats.url()),
        ("AUGUR_SERVICE__SHUTDOWN_TIMEOUT_MS", "2000"),
    ]);
    common::publish(&nats.url(), &common::real_vectors()[..400], 2_000.0);
    nats.stop();
    let started = Instant::now();
    common::sigterm(&child);
    let code = child.wait().unwrap();
    let took = started.elapsed();
    println!("exited {code:?} after {took:?}");
    assert!(
        took < Duration::from_secs(2 + 2 + 1),
        "exit took {took:?}: over the 2 s budget plus the 2 s grace"
    );
}

#[test]
fn test_a_bad_config_fails_at_start_up_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[executor]\nmax_batch = 0\n[nats]\nurll = \"x\"\n[breaker]\nfailure_rate = 7.0\n[kafka]\nenabled = true\ndebug = \"cgrp,groups\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_augur"))
        .args(["serve", "--config", p.to_str().unwrap()])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key nats.urll"), "{err}");
    assert!(err.contains("executor.max_batch"), "{err}");
    assert!(err.contains("breaker.failure_rate"), "{err}");
    assert!(
        err.contains("kafka.debug has unknown librdkafka debug contexts [\"groups\"]"),
        "{err}"
    );
}

#[test]
fn test_a_batch_of_many_bad_vectors_is_one_dead_letter_and_its_good_vectors_go_on() {
    let nats = common::NatsServer::start();
    let svc = common::Service::start(common::config(&nats.url()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One message: 20,000 empty vectors (each refused), 3 good ones, one without a symbol.
    let good = |seq: u64| {
        stamp(pb::FeatureVector {
            symbol: "GOOD".into(),
            timeframe: "1m".into(),
            sequence: seq,
            feature_set: "ta-v1".into(),
            values: vectors(1)[0].values.clone(),
            ..Default::default()
        })
    };
    let empty = stamp(pb::FeatureVector {
        symbol: "GOOD".into(),
        timeframe: "1m".into(),
        sequence: 1,
        feature_set: "ta-v1".into(),
        ..Default::default()
    });
    let mut batch = vec![good(1)];
    batch.extend(std::iter::repeat_n(empty, 20_000));
    batch.push(good(2));
    batch.push(pb::FeatureVector {
        symbol: String::new(),
        ..good(3)
    });
    batch.push(good(3));
    let payload = pb::FeatureVectorBatch { vectors: batch }.encode_to_vec();
    let letters = rt.block_on(async {
        let c = async_nats::connect(nats.url()).await.unwrap();
        let mut dlq = c.subscribe("features.dlq").await.unwrap();
        c.flush().await.unwrap();
        c.publish("features.1m.GOOD", payload.clone().into())
            .await
            .unwrap();
        c.flush().await.unwrap();
        let mut letters = Vec::new();
        // Everything the service sends for it arrives well within this.
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), dlq.next()).await {
            letters.push(m);
        }
        letters
    });
    // The bomb left the service ready.
    let (status, body) = common::get_json(&svc.http(), "/health/ready");
    assert_eq!(status, 200, "{body}");
    let report = svc.stop();
    assert_eq!(
        letters.len(),
        1,
        "one dead letter for the message, not one per vector"
    );
    let m = &letters[0];
    assert_eq!(&m.payload[..], &payload[..], "the payload once, byte for byte");
    let h = m.headers.as_ref().unwrap();
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
    assert_eq!(get("Augur-Reason"), "wrong_feature_count");
    assert_eq!(get("Augur-Reasons"), "invalid_field=1,wrong_feature_count=20000");
    assert_eq!(get("Augur-Refused"), "20001/20004");
    assert_eq!(get("Augur-Vector-Index"), "1");
    assert_eq!(get("Augur-Vector-Indices"), "1,2,3,4,5,6,7,8,9,10");
    assert_eq!(report.dead_letters.get("nats:wrong_feature_count"), Some(&1));
    assert_eq!(report.vectors_in, 3, "the good vectors of the batch went on");
}

#[test]
fn test_readiness_turns_503_as_soon_as_shutdown_begins() {
    // A load balancer must stop sending work before the service stops taking it.
    let nats = common::NatsServer::start();
    let cfg = common::config(&nats.url());
    actix_rt::System::new().block_on(async {
        let mut svc = augur_service::service::Service::build(cfg).await.unwrap();
        let addr = svc.start(None).await.unwrap().http.unwrap().to_string();
        let get =
            |addr: String| actix_rt::task::spawn_blocking(move || common::get_json(&addr, "/health/ready"));
        let (code, _) = get(addr.clone()).await.unwrap();
        assert_eq!(code, 200, "ready before the shutdown");
        let deadline = augur_service::bus::Deadline::after(Duration::from_secs(5));
        svc.stop_intake(deadline).await;
        let (code, body) = get(addr.clone()).await.unwrap();
        assert_eq!(code, 503, "not ready once the shutdown began: {body}");
        assert!(body.to_string().contains("shutting down"), "{body}");
        let report = svc.shutdown().await;
        assert!(report.drained);
    });
}

#[test]
fn test_with_nats_gone_stopping_the_intake_leaves_the_budget_to_the_other_stages() {
    // The drain of the subscriptions ends only when the server confirms it: with the server
    // gone, waiting for it spent the whole shutdown budget, and the drain, flush and commit
    // stages (Kafka's too) got nothing.
    let mut nats = common::NatsServer::start();
    let mut cfg = common::config(&nats.url());
    cfg.service.shutdown_timeout_ms = 2_000;
    actix_rt::System::new().block_on(async {
        let mut svc = augur_service::service::Service::build(cfg).await.unwrap();
        svc.start(None).await.unwrap();
        nats.stop();
        actix_rt::time::sleep(Duration::from_secs(1)).await; // the client sees it gone
        let started = Instant::now();
        let deadline = augur_service::bus::Deadline::after(Duration::from_secs(10));
        svc.stop_intake(deadline).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "stopping the intake took {took:?} of 10 s"
        );
        svc.shutdown().await;
    });
}

#[test]
fn test_a_message_published_the_moment_the_service_is_ready_is_taken_in() {
    // A producer that starts on "ready" (the faults and Kafka tests' feeders did) published
    // into subscriptions the server did not have yet: core NATS dropped those vectors, one per
    // stream, and each stream's window came up short (test first: it failed on main).
    // RUST_LOG=debug shows where a lost message stopped.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let nats = common::NatsServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async_nats::connect(nats.url())).unwrap();
    let mut dlq = rt.block_on(async {
        let s = client.subscribe("features.dlq").await.unwrap();
        client.flush().await.unwrap();
        s
    });
    for _ in 0..5 {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut cfg = common::config(&nats.url());
        cfg.http.enabled = false;
        cfg.grpc.enabled = false;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            actix_rt::System::new().block_on(async move {
                let run = serve(
                    cfg,
                    async {
                        let _ = stop_rx.await;
                    },
                    None,
                    Some(tx),
                );
                let tell = async {
                    if rx.await.is_ok() {
                        let _ = ready_tx.send(());
                    }
                };
                let (r, _) = futures::join!(run, tell);
                r
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        // At once: an undecodable message, which must come back as a dead letter.
        rt.block_on(async {
            client
                .publish(
                    "features.1m.READY",
                    bytes::Bytes::from_static(b"\xff\xff not protobuf"),
                )
                .await
                .unwrap();
            client.flush().await.unwrap();
        });
        // Lost or not: a slow machine (the whole suite running beside) may take seconds to
        // answer, so the wait is long; a message lost before the intake never comes.
        let got = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), dlq.next()).await });
        let _ = stop.send(());
        thread.join().unwrap().unwrap();
        assert!(
            matches!(got, Ok(Some(_))),
            "a message published on ready never reached the intake"
        );
    }
}
