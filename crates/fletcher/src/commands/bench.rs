//! `fletcher bench`: throughput, efficiency against the machine's GEMM ceiling, and
//! single-text latency.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;

use fletcher_engine::device::DeviceSpec;
use fletcher_engine::{EmbedRequest, Engine, EngineConfig, Metrics};

use crate::cli::BenchArgs;
use crate::io::read_texts;

const WARM_UP_TEXTS: usize = 64;
const LATENCY_TEXT: &str = "The quick brown fox jumps over the lazy dog near the river bank.";
const LATENCY_RUNS: usize = 50;

/// Embeds the corpus `--repeat` times after a warm-up and prints the median
/// throughput, the effective GFLOP/s and their share of the GEMM ceiling measured
/// now, and the median latency of one short sentence, to stdout.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut texts = read_texts(&args.input)?;
    if let Some(limit) = args.limit {
        texts.truncate(limit);
    }
    anyhow::ensure!(
        !texts.is_empty(),
        "{} holds no texts to benchmark",
        args.input.display()
    );
    let embedder = args.model.load()?;

    embedder
        .embed(&texts[..texts.len().min(WARM_UP_TEXTS)])
        .context("warm-up failed")?;
    let token_counts = embedder
        .token_counts(&texts)
        .context("cannot count tokens")?;
    let tokens: usize = token_counts.iter().sum();
    let max_tokens = token_counts.iter().copied().max().unwrap_or(0);
    let flops: f64 = token_counts.iter().map(|&n| embedder.flops(n)).sum();

    let mut runs = Vec::with_capacity(args.repeat);
    let (embedder, devices) = match &args.devices {
        None => {
            for run in 0..args.repeat {
                let start = Instant::now();
                embedder
                    .embed(&texts)
                    .context("embedding the corpus failed")?;
                let elapsed = start.elapsed();
                tracing::info!(run = run + 1, seconds = elapsed.as_secs_f64(), "timed pass");
                runs.push(elapsed);
            }
            (std::sync::Arc::new(embedder), None)
        }
        Some(list) => {
            let specs =
                DeviceSpec::parse_list(list).map_err(|e| anyhow::anyhow!("--devices: {e}"))?;
            let threads: usize = specs.iter().map(|d| d.threads).sum();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let config = EngineConfig {
                devices: specs,
                max_concurrent_inputs: usize::MAX / 2,
                ..EngineConfig::default()
            };
            let engine = Engine::start(embedder, config, std::sync::Arc::new(Metrics::new()))?;
            for run in 0..args.repeat {
                let start = Instant::now();
                runtime.block_on(embed_concurrently(&engine, &texts, args.request_texts))?;
                let elapsed = start.elapsed();
                tracing::info!(run = run + 1, seconds = elapsed.as_secs_f64(), "timed pass");
                runs.push(elapsed);
            }
            let weights = engine.metrics().render();
            let weights: Vec<&str> = weights
                .lines()
                .filter(|l| l.starts_with("fletcher_gpu_weight{"))
                .collect();
            engine.close();
            (
                engine.shared_embedder(),
                Some((list.clone(), threads, weights.join(", "))),
            )
        }
    };
    let seconds = median(&mut runs).as_secs_f64();
    let gflops = flops / seconds / 1e9;
    let threads = devices.as_ref().map_or(embedder.threads(), |d| d.1);
    let ceiling = fletcher_engine::ceiling_gflops(threads);

    let sentence = vec![LATENCY_TEXT.to_owned()];
    embedder
        .embed(&sentence)
        .context("latency warm-up failed")?;
    let mut latencies = Vec::with_capacity(LATENCY_RUNS);
    for _ in 0..LATENCY_RUNS {
        let start = Instant::now();
        embedder.embed(&sentence).context("latency run failed")?;
        latencies.push(start.elapsed());
    }
    let latency = median(&mut latencies);

    let n = texts.len();
    let mut out = std::io::stdout().lock();
    if let Some((list, threads, weights)) = &devices {
        writeln!(
            out,
            "devices     {list} ({threads} threads in all), final weights: {weights}"
        )?;
    }
    writeln!(
        out,
        "model       {} (dimension {}, max_seq_length {}, {} threads)",
        embedder.model_id(),
        embedder.dimension(),
        embedder.max_seq_length(),
        embedder.threads()
    )?;
    writeln!(
        out,
        "corpus      {n} texts, {tokens} tokens (mean {:.1}, max {max_tokens}) from {}",
        tokens as f64 / n as f64,
        args.input.display()
    )?;
    writeln!(
        out,
        "time        {seconds:.3} s, median of {} run(s) (min {:.3} s, max {:.3} s)",
        runs.len(),
        runs[0].as_secs_f64(),
        runs[runs.len() - 1].as_secs_f64()
    )?;
    writeln!(
        out,
        "throughput  {:.1} texts/s, {:.0} tokens/s",
        n as f64 / seconds,
        tokens as f64 / seconds
    )?;
    writeln!(
        out,
        "compute     {gflops:.1} GFLOP/s effective, {:.1}% of a {ceiling:.1} GFLOP/s GEMM ceiling measured now",
        100.0 * gflops / ceiling
    )?;
    writeln!(
        out,
        "latency     {:.2} ms median for one short sentence ({LATENCY_RUNS} runs)",
        latency.as_secs_f64() * 1e3
    )?;
    out.flush()?;
    Ok(())
}

/// Embeds `texts` as concurrent requests of `chunk` texts each, all in
/// flight at once, as many clients of a server would.
async fn embed_concurrently(engine: &Engine, texts: &[String], chunk: usize) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for part in texts.chunks(chunk) {
        let engine = engine.clone();
        let request = EmbedRequest {
            texts: part.to_vec(),
            ..EmbedRequest::default()
        };
        tasks.spawn(async move { engine.embed(request).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a request task failed")?
            .context("embedding the corpus failed")?;
    }
    Ok(())
}

/// Sorts `samples` and returns the median (the upper one of an even count).
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_sorts_and_picks_the_middle() {
        let ms = Duration::from_millis;
        let mut samples = vec![ms(9), ms(1), ms(5)];
        assert_eq!(median(&mut samples), ms(5));
        assert_eq!(samples, vec![ms(1), ms(5), ms(9)]);
        assert_eq!(median(&mut [ms(4), ms(2)]), ms(4));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
