use std::sync::Arc;
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;
use super::*;
use crate::{Pooling, TruncationSide};

fn scope() -> KeyScope {
    KeyScope {
        model: [7; 32],
        pooling: vec![Pooling::Mean],
        dataset: Some("news".to_owned()),
        prompt: Some("query: ".to_owned()),
        truncate: true,
        truncation_side: TruncationSide::Right,
        max_seq_length: 512,
    }
}

/// A vector whose components all derive from `seed`, so that two seeds
/// never give equal vectors.
fn vector(seed: u32, dim: usize) -> Arc<[f32]> {
    (0..dim).map(|i| seed as f32 + i as f32 / 1024.0).collect()
}

fn key(n: u32) -> CacheKey {
    scope().key(&format!("text {n}"))
}

fn memory_only(capacity_bytes: u64) -> (EmbeddingCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let config = CacheConfig {
        capacity_bytes,
        ..CacheConfig::default()
    };
    (
        EmbeddingCache::new(config, metrics.clone()).unwrap(),
        metrics,
    )
}

#[test]
fn equal_scopes_and_texts_give_equal_keys() {
    assert_eq!(scope().key("hello"), scope().key("hello"));
    assert_eq!(scope().clone().key("hello"), scope().key("hello"));
    let texts = ["a", "b", "hello"];
    let keys = scope().keys(&texts);
    assert_eq!(keys.len(), 3);
    for (text, key) in texts.iter().zip(&keys) {
        assert_eq!(*key, scope().key(text));
    }
}

#[test]
fn every_field_separates_keys() {
    let base = scope();
    let mut variants = vec![("text", base.key("hello!"))];
    let mut push = |name: &'static str, change: &dyn Fn(&mut KeyScope)| {
        let mut s = scope();
        change(&mut s);
        variants.push((name, s.key("hello")));
    };
    push("model", &|s| s.model[31] ^= 1);
    push("pooling", &|s| s.pooling = vec![Pooling::Cls]);
    push("pooling order", &|s| {
        s.pooling = vec![Pooling::Cls, Pooling::Mean]
    });
    push("pooling count", &|s| {
        s.pooling = vec![Pooling::Mean, Pooling::Mean]
    });
    push("no dataset", &|s| s.dataset = None);
    push("empty dataset", &|s| s.dataset = Some(String::new()));
    push("dataset", &|s| s.dataset = Some("sports".to_owned()));
    push("no prompt", &|s| s.prompt = None);
    push("prompt", &|s| s.prompt = Some("passage: ".to_owned()));
    push("truncate", &|s| s.truncate = false);
    push("side", &|s| s.truncation_side = TruncationSide::Left);
    push("max_seq_length", &|s| s.max_seq_length = 256);
    push("dataset as prompt", &|s| {
        s.prompt = s.dataset.take();
    });
    let reference = base.key("hello");
    for (i, (name, key)) in variants.iter().enumerate() {
        assert_ne!(*key, reference, "changing the {name} kept the key");
        for (other, other_key) in &variants[i + 1..] {
            assert_ne!(key, other_key, "{name} and {other} collide");
        }
    }
}

#[test]
fn field_boundaries_cannot_be_shifted() {
    let with_prompt = |prompt: &str| KeyScope {
        prompt: Some(prompt.to_owned()),
        ..scope()
    };
    assert_ne!(with_prompt("ab").key("c"), with_prompt("a").key("bc"));
    let with_dataset = |dataset: &str| KeyScope {
        dataset: Some(dataset.to_owned()),
        prompt: None,
        ..scope()
    };
    assert_ne!(with_dataset("x").key(""), with_dataset("").key("x"));
}

#[test]
fn keys_are_stable_across_builds() {
    // Replicas of different builds share Redis entries only while this
    // value holds; a deliberate change of the key layout changes the
    // domain tag in key.rs and this value together.
    assert_eq!(
        scope().key("hello").to_hex(),
        "3f268f6bf9b19ac528ae76a0bb5e46d5f9c1aeccab57ab3ccdfa2f71f2bbede9"
    );
}

#[test]
fn model_fingerprint_follows_contents_not_paths() {
    let dir = std::env::temp_dir().join(format!("fletcher-fingerprint-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("copy")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let w = write("model.safetensors", &weights);
    let t = write("tokenizer.json", b"{\"model\": {}}");
    let w2 = write("copy/weights.bin", &weights);
    let t2 = write("copy/tok.json", b"{\"model\": {}}");
    let mut changed = weights.clone();
    changed[1_234_567] ^= 1;
    let w3 = write("changed.safetensors", &changed);

    let a = model_fingerprint(&[&w, &t]).unwrap();
    assert_eq!(a, model_fingerprint(&[&w2, &t2]).unwrap());
    assert_ne!(a, model_fingerprint(&[&w3, &t]).unwrap());
    assert_ne!(a, model_fingerprint(&[&t, &w]).unwrap());
    assert_ne!(a, model_fingerprint(&[&w]).unwrap());

    let missing = dir.join("absent.json");
    let error = model_fingerprint(&[&w, &missing]).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(error.to_string().contains("absent.json"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn entry_weight_counts_key_vector_and_overhead() {
    assert_eq!(entry_weight(384), 32 + 16 + 384 * 4 + ENTRY_OVERHEAD_BYTES);
    assert_eq!(entry_weight(0), 32 + 16 + ENTRY_OVERHEAD_BYTES);
}

#[tokio::test]
async fn hits_and_misses_are_counted_per_text() {
    let (cache, metrics) = memory_only(1 << 20);
    let keys = [key(1), key(2), key(3)];
    let first = cache.get_many(&keys).await;
    assert!(first.iter().all(Option::is_none));
    assert_eq!(metrics.cache_hits_total.get(), 0);
    assert_eq!(metrics.cache_misses_total.get(), 3);

    cache
        .put_many(vec![(key(1), vector(1, 8)), (key(2), vector(2, 8))])
        .await;
    assert_eq!(cache.entries(), 2);
    assert_eq!(cache.bytes(), 2 * entry_weight(8));
    assert_eq!(metrics.cache_entries.get(), 2);
    assert_eq!(metrics.cache_bytes.get(), 2 * entry_weight(8) as i64);

    let second = cache.get_many(&[key(2), key(3), key(1), key(2)]).await;
    assert_eq!(second[0].as_deref(), Some(&*vector(2, 8)));
    assert!(second[1].is_none());
    assert_eq!(second[2].as_deref(), Some(&*vector(1, 8)));
    assert_eq!(second[3].as_deref(), Some(&*vector(2, 8)));
    assert_eq!(metrics.cache_hits_total.get(), 3);
    assert_eq!(metrics.cache_misses_total.get(), 4);
    assert!(cache.get_many(&[]).await.is_empty());
    assert_eq!(metrics.cache_misses_total.get(), 4);
}

#[tokio::test]
async fn disabled_cache_answers_nothing_and_counts_misses() {
    let (cache, metrics) = memory_only(0);
    cache.put_many(vec![(key(1), vector(1, 4))]).await;
    assert_eq!(cache.get_many(&[key(1)]).await, vec![None]);
    assert_eq!(metrics.cache_misses_total.get(), 1);
    assert_eq!(
        (cache.bytes(), cache.entries(), cache.capacity_bytes()),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn memory_stays_within_capacity_at_ten_times_its_size() {
    const DIM: usize = 384;
    let capacity = 100 * entry_weight(DIM);
    let (cache, metrics) = memory_only(capacity);
    for batch in 0..40u32 {
        let entries = (0..25)
            .map(|i| {
                let n = batch * 25 + i;
                (key(n), vector(n, DIM))
            })
            .collect();
        cache.put_many(entries).await;
        assert!(
            cache.bytes() <= capacity,
            "batch {batch}: {} > {capacity}",
            cache.bytes()
        );
    }
    let held = cache.inner.memory.as_ref().unwrap().weights();
    let counted: u64 = held.iter().map(|(_, w)| w).sum();
    assert!(counted <= capacity, "entries weigh {counted} > {capacity}");
    assert_eq!(counted, cache.bytes());
    assert_eq!(held.len() as u64, cache.entries());
    assert!(
        cache.entries() >= 90,
        "only {} entries kept",
        cache.entries()
    );
    assert_eq!(metrics.cache_bytes.get() as u64, cache.bytes());
    assert_eq!(metrics.cache_entries.get() as u64, cache.entries());
}

#[tokio::test]
async fn oversized_vector_is_not_kept() {
    let (cache, _) = memory_only(entry_weight(16));
    cache.put_many(vec![(key(1), vector(1, 17))]).await;
    assert_eq!(cache.get_many(&[key(1)]).await, vec![None]);
    assert_eq!(cache.bytes(), 0);
}

/// Requests as the engine makes them: look up, then store the misses.
async fn request(cache: &EmbeddingCache, ids: &[u32], dim: usize) -> usize {
    let keys: Vec<CacheKey> = ids.iter().map(|&n| key(n)).collect();
    let found = cache.get_many(&keys).await;
    let hits = found.iter().filter(|v| v.is_some()).count();
    let misses = ids
        .iter()
        .zip(&found)
        .filter(|(_, v)| v.is_none())
        .map(|(&n, _)| (key(n), vector(n, dim)))
        .collect();
    cache.put_many(misses).await;
    hits
}

#[tokio::test]
async fn a_scan_of_one_off_texts_keeps_the_hot_set() {
    const DIM: usize = 256;
    const HOT: u32 = 100;
    let capacity = 200 * entry_weight(DIM);
    let (cache, _) = memory_only(capacity);
    let hot: Vec<u32> = (0..HOT).collect();
    for _ in 0..8 {
        request(&cache, &hot, DIM).await;
    }
    assert_eq!(request(&cache, &hot, DIM).await, HOT as usize);

    // Each request: 50 texts never seen before and 10 of the hot set. Every
    // hot text comes back once per 500 new texts, so a recency-only cache of
    // 200 entries would have dropped it each time.
    let mut hot_hits = 0;
    let mut next = 1_000_000;
    for round in 0..100u32 {
        let mut ids: Vec<u32> = (next..next + 50).collect();
        next += 50;
        let start = (round * 10) % HOT;
        ids.extend(start..start + 10);
        hot_hits += request(&cache, &ids, DIM).await;
    }
    assert!(
        hot_hits >= 950,
        "hot texts answered {hot_hits} of 1000 times during the scan"
    );
    assert!(cache.bytes() <= capacity);

    // A further scan of 500 one-off texts (2.5 times the capacity) with no
    // hot traffic at all. A recency-only cache would keep none of the hot
    // set; TinyLFU's frequency sketch ages as the scan goes on, so it keeps
    // most of it, though not deterministically all.
    for _ in 0..10 {
        let ids: Vec<u32> = (next..next + 50).collect();
        next += 50;
        request(&cache, &ids, DIM).await;
    }
    let kept = cache
        .get_many(&hot.iter().map(|&n| key(n)).collect::<Vec<_>>())
        .await
        .iter()
        .filter(|v| v.is_some())
        .count();
    assert!(
        kept >= 50,
        "only {kept} of {HOT} hot texts survived the scan"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_use_stays_within_capacity() {
    const DIM: usize = 64;
    let capacity = 500 * entry_weight(DIM);
    let (cache, metrics) = memory_only(capacity);
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for round in 0..50u32 {
                    let ids: Vec<u32> = (0..20).map(|i| (t * 7 + round * 20 + i) % 3000).collect();
                    request(&cache, &ids, DIM).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(cache.bytes() <= capacity);
    assert_eq!(
        metrics.cache_hits_total.get() + metrics.cache_misses_total.get(),
        8 * 50 * 20
    );
}

#[test]
fn redis_values_are_little_endian_f32() {
    let v = [1.0f32, -2.5, f32::MIN_POSITIVE];
    let bytes = redis_tier::encode(&v);
    assert_eq!(&bytes[..4], &[0, 0, 0x80, 0x3f]);
    assert_eq!(&bytes[4..8], &(-2.5f32).to_le_bytes());
    assert_eq!(redis_tier::decode(&bytes).as_deref(), Some(&v[..]));
    assert!(redis_tier::decode(&bytes[..5]).is_none());
    assert!(redis_tier::decode(&[]).is_none());
}

#[test]
fn passwords_are_hidden() {
    assert_eq!(
        redis_tier::redact("redis://:pw@host:6379/0"),
        "redis://:***@host:6379/0"
    );
    assert_eq!(
        redis_tier::redact("redis://me:pw@host/"),
        "redis://me:***@host/"
    );
    assert_eq!(redis_tier::redact("redis://host:6379"), "redis://host:6379");
    let error = EmbeddingCache::new(
        CacheConfig {
            redis_url: Some("redis://:hunter2@127.0.0.1:notaport/".to_owned()),
            ..CacheConfig::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, CacheError::RedisUrl { .. }), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn zero_redis_timeout_is_refused() {
    let error = EmbeddingCache::new(
        CacheConfig {
            redis_url: Some("redis://127.0.0.1:1/".to_owned()),
            redis_timeout: Duration::ZERO,
            ..CacheConfig::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            CacheError::InvalidSetting {
                setting: "redis_timeout",
                ..
            }
        ),
        "{error}"
    );
}

const TIMEOUT: Duration = Duration::from_millis(100);
const MARGIN: Duration = Duration::from_millis(100);
const COOL_DOWN: Duration = Duration::from_millis(500);

fn with_redis(
    url: &str,
    capacity_bytes: u64,
    ttl: Option<Duration>,
) -> (EmbeddingCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let config = CacheConfig {
        capacity_bytes,
        redis_url: Some(url.to_owned()),
        ttl,
        key_prefix: "fletcher-test:".to_owned(),
        redis_timeout: TIMEOUT,
        breaker_threshold: 3,
        breaker_cool_down: COOL_DOWN,
    };
    (
        EmbeddingCache::new(config, metrics.clone()).unwrap(),
        metrics,
    )
}

async fn raw(url: &str, cmd: &redis::Cmd) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn redis_shares_entries_between_instances() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let (a, _) = with_redis(&url, 1 << 20, Some(Duration::from_secs(60)));
    let (b, b_metrics) = with_redis(&url, 1 << 20, None);
    a.put_many(vec![(key(1), vector(1, 32)), (key(2), vector(2, 32))])
        .await;

    let found = b.get_many(&[key(1), key(2), key(3)]).await;
    assert_eq!(found[0].as_deref(), Some(&*vector(1, 32)));
    assert_eq!(found[1].as_deref(), Some(&*vector(2, 32)));
    assert!(found[2].is_none());
    assert_eq!(b_metrics.cache_hits_total.get(), 2);
    assert_eq!(b_metrics.cache_misses_total.get(), 1);
    assert_eq!(b.entries(), 2, "Redis hits were not copied into memory");
    assert_eq!(b_metrics.cache_redis_errors_total.get(), 0);

    let name = format!("fletcher-test:{}", key(1).to_hex());
    let stored = raw(&url, redis::cmd("GET").arg(&name)).await;
    assert_eq!(
        stored,
        redis::Value::BulkString(redis_tier::encode(&vector(1, 32)))
    );
    let ttl = raw(&url, redis::cmd("PTTL").arg(&name)).await;
    assert!(
        matches!(ttl, redis::Value::Int(ms) if ms > 50_000 && ms <= 60_000),
        "{ttl:?}"
    );

    let corrupt = format!("fletcher-test:{}", key(4).to_hex());
    raw(&url, redis::cmd("SET").arg(&corrupt).arg(&b"abc"[..])).await;
    assert_eq!(b.get_many(&[key(4)]).await, vec![None]);
    assert_eq!(b_metrics.cache_redis_errors_total.get(), 1);
    drop(server);
}

/// Calls `get_many` and `put_many` once each and checks both returned
/// within the timeout and margin; returns whether the get hit.
async fn timed_round(cache: &EmbeddingCache, n: u32) -> bool {
    let started = Instant::now();
    let found = cache.get_many(&[key(n)]).await;
    let got = started.elapsed();
    let started = Instant::now();
    cache.put_many(vec![(key(n + 1), vector(n + 1, 16))]).await;
    let put = started.elapsed();
    assert!(got <= TIMEOUT + MARGIN, "get_many took {got:?}");
    assert!(put <= TIMEOUT + MARGIN, "put_many took {put:?}");
    found[0].is_some()
}

/// Stores `n` through `writer` and reads it through `reader` until the
/// read hits; returns how long that took, or fails after `limit`.
async fn wait_for_sharing(
    writer: &EmbeddingCache,
    reader: &EmbeddingCache,
    n: u32,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        writer.put_many(vec![(key(n), vector(n, 16))]).await;
        if timed_round(reader, n).await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no Redis hit within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_killed_costs_at_most_the_timeout_and_recovers_on_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let (writer, _) = with_redis(&url, 0, None);
    let (reader, metrics) = with_redis(&url, 0, None);
    wait_for_sharing(&writer, &reader, 10, Duration::from_secs(2)).await;
    assert_eq!(metrics.cache_redis_errors_total.get(), 0);

    server.kill();
    for n in 0..10 {
        assert!(!timed_round(&reader, 100 + n * 2).await);
    }
    let errors = metrics.cache_redis_errors_total.get();
    assert!(errors >= 3, "{errors} Redis errors counted");
    assert!(reader.redis_degraded());
    assert!(!timed_round(&reader, 200).await);

    server.restart();
    let recovered =
        wait_for_sharing(&writer, &reader, 300, COOL_DOWN + Duration::from_secs(2)).await;
    assert!(
        recovered <= COOL_DOWN + Duration::from_millis(500),
        "hits resumed {recovered:?} after the restart"
    );
    assert!(!reader.redis_degraded());
}

#[tokio::test]
async fn redis_hung_costs_at_most_the_timeout_then_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let (writer, _) = with_redis(&url, 0, None);
    let (reader, metrics) = with_redis(&url, 0, None);
    wait_for_sharing(&writer, &reader, 10, Duration::from_secs(2)).await;

    server.pause();
    let mut slow = 0;
    for _ in 0..6 {
        let started = Instant::now();
        assert!(!timed_round(&reader, 10).await);
        if started.elapsed() >= TIMEOUT {
            slow += 1;
        }
    }
    assert_eq!(metrics.cache_redis_errors_total.get(), 3);
    assert!(slow <= 2, "{slow} rounds waited for the hung server");
    let started = Instant::now();
    assert!(!timed_round(&reader, 10).await);
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "open breaker still waited"
    );

    server.resume();
    let started = Instant::now();
    loop {
        if timed_round(&reader, 10).await {
            break;
        }
        assert!(
            started.elapsed() < COOL_DOWN + Duration::from_secs(2),
            "no hit after resuming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() <= COOL_DOWN + Duration::from_millis(500));
}

#[tokio::test]
async fn redis_down_at_start_fails_nothing() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.kill();
    let (cache, metrics) = with_redis(&url, 1 << 20, None);
    // Each round looks up key n and stores key n + 1.
    assert!(!timed_round(&cache, 1).await);
    assert!(
        timed_round(&cache, 2).await,
        "the memory tier did not answer"
    );
    assert!(metrics.cache_redis_errors_total.get() >= 1);
    assert_eq!(metrics.cache_hits_total.get(), 1);
}
