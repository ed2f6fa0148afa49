//! The command-line grammar of `fletcher`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fletcher_engine::{Embedder, LoadOptions, Pooling, TruncationSide};

/// Fletcher: fast CPU text embeddings with sentence-transformers models.
#[derive(Debug, Parser)]
#[command(name = "fletcher", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed every text of a file and write the vectors to another file.
    Embed(EmbedArgs),
    /// Measure throughput, efficiency and single-text latency on a corpus.
    Bench(BenchArgs),
    /// Serve the model over HTTP (and Arrow Flight with --flight-port).
    Serve(Box<fletcher_server::ServeArgs>),
}

/// How to find and configure the model; shared by every subcommand.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model directory, or Hugging Face Hub id `org/name[@revision]`
    /// (cached under $HF_HOME/hub; HF_HUB_OFFLINE=1 forbids downloads).
    #[arg(long, short = 'm', env = "FLETCHER_MODEL")]
    pub model: String,

    /// Worker threads [default: every core].
    #[arg(long, value_parser = parse_positive)]
    pub threads: Option<usize>,

    /// Pooling instead of the model's own: cls, mean, max, mean_sqrt_len or last_token.
    /// Required for a plain transformers model without a pooling config.
    #[arg(long, value_parser = parse_pooling)]
    pub pooling: Option<Pooling>,

    /// L2-normalize the vectors (true or false) [default: as the model says].
    #[arg(long, value_name = "BOOL")]
    pub normalize: Option<bool>,

    /// Most tokens of one text, special tokens included [default: the model's].
    #[arg(long, value_parser = parse_positive)]
    pub max_seq_length: Option<usize>,

    /// Which end of an over-long text is cut.
    #[arg(long, default_value = "right", value_parser = parse_truncation_side)]
    pub truncation_side: TruncationSide,

    /// Most tokens in one forward pass [default: the engine's].
    #[arg(long, value_parser = parse_positive)]
    pub max_batch_tokens: Option<usize>,
}

impl ModelArgs {
    /// The engine's load options these arguments ask for.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            threads: self.threads,
            pooling: self.pooling,
            normalize: self.normalize,
            max_seq_length: self.max_seq_length,
            truncation_side: self.truncation_side,
            max_batch_tokens: self.max_batch_tokens,
        }
    }

    /// Loads the model, logging how long it took.
    pub fn load(&self) -> anyhow::Result<Embedder> {
        let start = std::time::Instant::now();
        let embedder = Embedder::load(&self.model, &self.load_options())
            .with_context(|| format!("cannot load model {:?}", self.model))?;
        tracing::info!(
            model = embedder.model_id(),
            dimension = embedder.dimension(),
            max_seq_length = embedder.max_seq_length(),
            threads = embedder.threads(),
            seconds = start.elapsed().as_secs_f64(),
            "model loaded"
        );
        Ok(embedder)
    }
}

/// Arguments of `fletcher embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Texts to embed: .jsonl/.ndjson (a "text" field a line), .parquet or
    /// .arrow/.arrows/.ipc (a "text" column), anything else one text a line.
    #[arg(long, short = 'i')]
    pub input: PathBuf,

    /// Where the vectors go: .jsonl/.ndjson, .npy, .arrow/.ipc (IPC file),
    /// .arrows (IPC stream) or .parquet. An existing file is replaced.
    #[arg(long, short = 'o')]
    pub output: PathBuf,

    /// Texts embedded and written at a time.
    #[arg(long, default_value_t = 4096, value_parser = parse_positive)]
    pub batch_texts: usize,
}

/// Arguments of `fletcher bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Corpus to embed, in any format `embed` reads.
    #[arg(long, short = 'i')]
    pub input: PathBuf,

    /// Use only the first N texts.
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub limit: Option<usize>,

    /// Timed passes over the corpus; the median is reported.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    pub repeat: usize,

    /// Run the corpus through the serving engine's dispatcher on these
    /// devices (`cpu:1,cpu:1`, `cpu:2`), in concurrent requests of
    /// `--request-texts` texts, instead of one direct call.
    #[arg(long)]
    pub devices: Option<String>,

    /// Texts per request with `--devices`.
    #[arg(long, default_value_t = 32, value_parser = parse_positive)]
    pub request_texts: usize,
}

fn parse_positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

fn parse_pooling(value: &str) -> Result<Pooling, String> {
    value.parse::<Pooling>().map_err(|err| err.to_string())
}

fn parse_truncation_side(value: &str) -> Result<TruncationSide, String> {
    value.parse::<TruncationSide>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fletcher").chain(args.iter().copied()))
    }

    #[test]
    fn embed_defaults_and_options() {
        let cli = parse(&[
            "embed", "--model", "m", "--input", "a.txt", "--output", "b.npy",
        ])
        .unwrap();
        let Command::Embed(args) = cli.command else {
            panic!("expected embed")
        };
        assert_eq!(args.batch_texts, 4096);
        assert_eq!(args.model.model, "m");
        assert_eq!(args.model.truncation_side, TruncationSide::Right);
        assert_eq!(args.model.normalize, None);
        assert_eq!(args.model.threads, None);

        let cli = parse(&[
            "embed",
            "-m",
            "m",
            "-i",
            "a.txt",
            "-o",
            "b.npy",
            "--threads",
            "3",
            "--pooling",
            "mean",
            "--normalize",
            "false",
            "--max-seq-length",
            "128",
            "--truncation-side",
            "left",
            "--batch-texts",
            "17",
        ])
        .unwrap();
        let Command::Embed(args) = cli.command else {
            panic!("expected embed")
        };
        let options = args.model.load_options();
        assert_eq!(options.threads, Some(3));
        assert_eq!(options.pooling, Some(Pooling::Mean));
        assert_eq!(options.normalize, Some(false));
        assert_eq!(options.max_seq_length, Some(128));
        assert_eq!(options.truncation_side, TruncationSide::Left);
        assert_eq!(args.batch_texts, 17);
    }

    #[test]
    fn bench_defaults_and_options() {
        let cli = parse(&[
            "bench",
            "-m",
            "m",
            "-i",
            "c.jsonl",
            "--limit",
            "100",
            "--normalize",
            "true",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("expected bench")
        };
        assert_eq!(args.limit, Some(100));
        assert_eq!(args.repeat, 1);
        assert_eq!(args.model.normalize, Some(true));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &[
                "embed",
                "-m",
                "m",
                "-i",
                "a",
                "-o",
                "b.npy",
                "--threads",
                "0",
            ][..],
            &[
                "embed",
                "-m",
                "m",
                "-i",
                "a",
                "-o",
                "b.npy",
                "--normalize",
                "maybe",
            ],
            &[
                "embed",
                "-m",
                "m",
                "-i",
                "a",
                "-o",
                "b.npy",
                "--pooling",
                "median",
            ],
            &[
                "embed",
                "-m",
                "m",
                "-i",
                "a",
                "-o",
                "b.npy",
                "--truncation-side",
                "middle",
            ],
            &["bench", "-m", "m", "-i", "a", "--repeat", "0"],
            &["embed", "-m", "m", "-i", "a"],
            &["frobnicate"],
        ] {
            let err = parse(args).unwrap_err();
            assert_ne!(err.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
