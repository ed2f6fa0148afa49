//! The serving engine: cross-request batching over several devices, load
//! balancing by measured throughput, and recovery from device faults.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{compare, minilm_dir, references};
use fletcher_engine::device::{DeviceSpec, Fault};
use fletcher_engine::{
    EmbedRequest, Embedder, Engine, EngineConfig, EngineError, LoadOptions, Metrics,
};

/// Held by every test of this file: each starts engines with their own
/// threads, and the tests that measure throughput or time a refusal are
/// only meaningful when they do not share the cores with the others.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn texts() -> Vec<String> {
    references("minilm_reference.jsonl")
        .into_iter()
        .map(|r| r.text)
        .collect()
}

fn engine(devices: &str, config: EngineConfig) -> Engine {
    let embedder =
        Embedder::load_dir("all-MiniLM-L6-v2", &minilm_dir(), &LoadOptions::default()).unwrap();
    let config = EngineConfig {
        devices: DeviceSpec::parse_list(devices).unwrap(),
        fault_injection: true,
        ..config
    };
    Engine::start(embedder, config, Arc::new(Metrics::new())).unwrap()
}

fn request(texts: &[String]) -> EmbedRequest {
    EmbedRequest {
        texts: texts.to_vec(),
        ..EmbedRequest::default()
    }
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| compare(x, y).1)
        .fold(0.0, f64::max)
}

fn counter(engine: &Engine, name: &str) -> f64 {
    let text = engine.metrics().render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_two_devices_get_their_own_vectors() {
    let _serial = SERIAL.lock().await;
    let texts = texts();
    let reference = Embedder::load_dir("m", &minilm_dir(), &LoadOptions::default())
        .unwrap()
        .embed(&texts)
        .unwrap();
    let engine = engine("cpu:1,cpu:1", EngineConfig::default());
    let mut handles = Vec::new();
    for (k, chunk) in texts.chunks(9).enumerate() {
        let engine = engine.clone();
        let chunk = chunk.to_vec();
        handles.push(tokio::spawn(async move {
            (k, engine.embed(request(&chunk)).await)
        }));
    }
    for handle in handles {
        let (k, result) = handle.await.unwrap();
        let got = result.unwrap();
        let want = &reference[k * 9..(k * 9 + 9).min(reference.len())];
        assert!(max_diff(&got.vectors, want) <= 1e-6, "request {k}");
        assert!(got.prompt_tokens > 0);
    }
    let sequences = counter(&engine, "fletcher_gpu_sequences_total");
    assert_eq!(
        sequences as usize,
        texts.len() + 1 - 1,
        "sequences counted once each"
    );
    assert_eq!(engine.inputs_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_device_is_retried_on_the_other() {
    let _serial = SERIAL.lock().await;
    let texts: Vec<String> = texts().into_iter().take(12).collect();
    let engine = engine("cpu:1,cpu:1", EngineConfig::default());
    let want = engine.embed(request(&texts)).await.unwrap().vectors;
    engine.inject_fault("cpu:0", Fault::Panic(1)).unwrap();
    engine.inject_fault("cpu:1", Fault::Panic(1)).unwrap();
    // Whichever device takes the batch panics; the retry goes to the other,
    // which panics too: the texts fail, typed, and nobody hangs.
    let err = engine.embed(request(&texts)).await.unwrap_err();
    assert!(matches!(err, EngineError::Device { .. }), "{err}");
    assert_eq!(counter(&engine, "fletcher_panics_total"), 2.0);

    engine.inject_fault("cpu:0", Fault::Panic(1)).unwrap();
    let got = engine.embed(request(&texts)).await.unwrap().vectors;
    let panics = counter(&engine, "fletcher_panics_total");
    assert!(panics == 2.0 || panics == 3.0);
    assert!(max_diff(&got, &want) <= 1e-6);
    let after = engine.embed(request(&texts)).await.unwrap().vectors;
    assert!(max_diff(&after, &want) <= 1e-6);
    assert_eq!(engine.inputs_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_vectors_are_never_returned() {
    let _serial = SERIAL.lock().await;
    let texts: Vec<String> = texts().into_iter().take(5).collect();
    let engine = engine("cpu:2", EngineConfig::default());
    let want = engine.embed(request(&texts)).await.unwrap().vectors;

    // One bad batch: its first text is retried and served.
    engine.inject_fault("cpu:0", Fault::Nan(1)).unwrap();
    let got = engine.embed(request(&texts)).await.unwrap().vectors;
    assert!(max_diff(&got, &want) <= 1e-6);
    assert_eq!(counter(&engine, "fletcher_output_invalid_total"), 1.0);

    // Two bad batches: the retry is bad too, and exactly that text fails.
    engine.inject_fault("cpu:0", Fault::Nan(2)).unwrap();
    let err = engine.embed(request(&texts)).await.unwrap_err();
    match err {
        EngineError::InvalidOutput { index, .. } => assert!(index < texts.len()),
        other => panic!("expected InvalidOutput, got {other}"),
    }
    assert_eq!(counter(&engine, "fletcher_output_invalid_total"), 3.0);
    let after = engine.embed(request(&texts)).await.unwrap().vectors;
    assert!(max_diff(&after, &want) <= 1e-6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_follow_measured_throughput() {
    let _serial = SERIAL.lock().await;
    let mut texts = texts();
    texts.truncate(60);
    let engine = engine(
        "cpu:1,cpu:1",
        EngineConfig {
            // Batches of one size on both devices (the slower one's budget
            // has a floor of 256 tokens), so the weights compare speeds and
            // not batch-size efficiency.
            max_batch_tokens: 256,
            ..EngineConfig::default()
        },
    );
    engine.inject_fault("cpu:1", Fault::Slow(3.0)).unwrap();
    let weight = |device: &str| -> f64 {
        let text = engine.metrics().render();
        text.lines()
            .find(|l| {
                l.starts_with("fletcher_gpu_weight") && l.contains(&format!("device=\"{device}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap()
    };
    // The ratio after each round of requests; a single batch on a shared
    // machine can be off, so the settled value is the median of the last
    // rounds.
    let mut ratios = Vec::new();
    for _ in 0..8 {
        let mut handles = Vec::new();
        for chunk in texts.chunks(10) {
            let engine = engine.clone();
            let chunk = chunk.to_vec();
            handles.push(tokio::spawn(
                async move { engine.embed(request(&chunk)).await },
            ));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        ratios.push(weight("cpu:0") / weight("cpu:1"));
    }
    let mut settled = ratios[4..].to_vec();
    settled.sort_by(f64::total_cmp);
    let ratio = (settled[1] + settled[2]) / 2.0;
    assert!(
        (2.4..=3.6).contains(&ratio),
        "median weight ratio {ratio} of the last rounds, all rounds: {ratios:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_at_once_past_the_limit() {
    let _serial = SERIAL.lock().await;
    let texts: Vec<String> = texts().into_iter().take(40).collect();
    let engine = engine(
        "cpu:2",
        EngineConfig {
            max_concurrent_inputs: 50,
            ..EngineConfig::default()
        },
    );
    engine.inject_fault("cpu:0", Fault::Slow(20.0)).unwrap();
    let first = {
        let engine = engine.clone();
        let texts = texts.clone();
        tokio::spawn(async move { engine.embed(request(&texts)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = std::time::Instant::now();
    let err = engine.embed(request(&texts)).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "refusal took {:?}",
        start.elapsed()
    );
    match err {
        EngineError::Overloaded {
            requested, limit, ..
        } => assert_eq!((requested, limit), (40, 50)),
        other => panic!("expected Overloaded, got {other}"),
    }
    engine.inject_fault("cpu:0", Fault::Slow(1.0)).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(engine.inputs_in_flight(), 0);
    engine.embed(request(&texts)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_request_fails_typed_and_frees_its_inputs() {
    let _serial = SERIAL.lock().await;
    let texts: Vec<String> = texts().into_iter().take(30).collect();
    let engine = engine(
        "cpu:2",
        EngineConfig {
            request_timeout: Some(Duration::from_millis(1)),
            max_batch_tokens: 64,
            ..EngineConfig::default()
        },
    );
    engine.inject_fault("cpu:0", Fault::Slow(50.0)).unwrap();
    let err = engine.embed(request(&texts)).await.unwrap_err();
    assert!(matches!(err, EngineError::Timeout { .. }), "{err}");
    assert_eq!(engine.inputs_in_flight(), 0);
}
