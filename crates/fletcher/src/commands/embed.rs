//! `fletcher embed`: texts from one file, vectors to another.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::EmbedArgs;
use crate::io::{check_output_path, create_sink, read_texts};

/// Reads the input, embeds it in chunks of `--batch-texts` in input order, streams each
/// chunk to the output, and prints one summary line to stderr.
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    check_output_path(&args.output)?;
    let texts = read_texts(&args.input)?;
    tracing::info!(texts = texts.len(), input = %args.input.display(), "read input");
    let embedder = args.model.load()?;
    let mut sink = create_sink(&args.output, embedder.dimension(), texts.len())?;

    let progress = progress_bar(texts.len());
    let start = Instant::now();
    for (index, chunk) in texts.chunks(args.batch_texts).enumerate() {
        let first = index * args.batch_texts;
        let vectors = embedder.embed(chunk).with_context(|| {
            format!(
                "cannot embed texts {}..{} of {}",
                first + 1,
                first + chunk.len(),
                args.input.display()
            )
        })?;
        sink.write_batch(chunk, &vectors)?;
        progress.inc(chunk.len() as u64);
    }
    sink.finish()?;
    progress.finish_and_clear();

    let elapsed = start.elapsed();
    eprintln!(
        "embedded {} texts in {:.2} s ({:.1} texts/s) -> {}",
        texts.len(),
        elapsed.as_secs_f64(),
        rate(texts.len(), elapsed),
        args.output.display()
    );
    Ok(())
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// A bar on stderr when it is a terminal; a hidden one otherwise, so logs and pipes
/// stay clean.
fn progress_bar(total: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} texts, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
