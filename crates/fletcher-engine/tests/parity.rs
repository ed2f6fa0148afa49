//! Vectors equal to sentence-transformers' on real and tiny models.
//!
//! The references under `tests/data` were written by
//! `scripts/make_reference.py` with sentence-transformers on CPU in float32.

mod common;

use common::{assert_matches, compare, minilm_dir, references, repo_root};
use fletcher_engine::{EmbedOptions, Embedder, EngineError, LoadOptions, Pooling, TruncationSide};

fn texts(refs: &[common::Reference]) -> Vec<String> {
    refs.iter().map(|r| r.text.clone()).collect()
}

fn minilm(options: &LoadOptions) -> Embedder {
    Embedder::load_dir("all-MiniLM-L6-v2", &minilm_dir(), options).expect("load all-MiniLM-L6-v2")
}

#[test]
fn minilm_matches_sentence_transformers() {
    let refs = references("minilm_reference.jsonl");
    assert!(refs.len() >= 100, "only {} reference texts", refs.len());
    let embedder = minilm(&LoadOptions::default());
    assert_eq!(embedder.dimension(), 384);
    assert_eq!(embedder.max_seq_length(), 256);
    let texts = texts(&refs);
    let got = embedder.embed(&texts).unwrap();
    assert_matches(&got, &refs, "all-MiniLM-L6-v2");

    let counts = embedder.token_counts(&texts).unwrap();
    for (i, (count, r)) in counts.iter().zip(&refs).enumerate() {
        if let Some(want) = r.tokens {
            assert_eq!(*count, want, "token count of text {i}");
        }
    }
    assert!(counts.contains(&256), "no reference text was truncated");
}

#[test]
fn a_vector_is_the_same_alone_and_in_any_batch() {
    let refs = references("minilm_reference.jsonl");
    let texts = texts(&refs);
    let embedder = minilm(&LoadOptions {
        max_batch_tokens: Some(1024),
        ..LoadOptions::default()
    });
    let together = embedder.embed(&texts).unwrap();
    let mut worst = 0.0f64;
    for (i, text) in texts.iter().enumerate().step_by(7) {
        let alone = embedder.embed(std::slice::from_ref(text)).unwrap();
        let window: Vec<String> = texts.iter().cycle().skip(i).take(13).cloned().collect();
        let in_window = embedder.embed(&window).unwrap();
        for other in [&alone[0], &in_window[0]] {
            let (_, max) = compare(other, &together[i]);
            worst = worst.max(max);
        }
    }
    assert!(
        worst <= 1e-6,
        "largest difference between batchings: {worst}"
    );
}

#[test]
fn other_pooling_modes_match() {
    for (file, mode) in [
        ("minilm_pool_cls.jsonl", Pooling::Cls),
        ("minilm_pool_max.jsonl", Pooling::Max),
        ("minilm_pool_mean.jsonl", Pooling::Mean),
        (
            "minilm_pool_mean_sqrt_len_tokens.jsonl",
            Pooling::MeanSqrtLen,
        ),
        ("minilm_pool_lasttoken.jsonl", Pooling::LastToken),
    ] {
        let refs = references(file);
        let embedder = minilm(&LoadOptions {
            pooling: Some(mode),
            normalize: Some(false),
            ..LoadOptions::default()
        });
        let got = embedder.embed(&texts(&refs)).unwrap();
        assert_matches(&got, &refs, file);
    }
}

#[test]
fn left_truncation_matches() {
    let refs = references("minilm_left_truncation.jsonl");
    let embedder = minilm(&LoadOptions {
        truncation_side: TruncationSide::Left,
        ..LoadOptions::default()
    });
    let got = embedder.embed(&texts(&refs)).unwrap();
    assert_matches(&got, &refs, "left truncation");

    let right = minilm(&LoadOptions::default());
    let per_call = right
        .embed_with(
            &texts(&refs),
            &EmbedOptions {
                truncation_side: Some(TruncationSide::Left),
                ..EmbedOptions::default()
            },
        )
        .unwrap();
    assert_eq!(per_call, got);
}

#[test]
fn tiny_models_in_every_dtype_and_architecture_match() {
    let tiny = repo_root().join("tests/data/tiny");
    let mut seen = 0;
    for name in [
        "bert-gelu-f32",
        "bert-gelu-new-f16",
        "bert-relu-bf16",
        "xlmr-f32",
    ] {
        let dir = tiny.join(name);
        let refs = references(&format!("tiny/{name}/reference.jsonl"));
        let embedder = Embedder::load_dir(name, &dir, &LoadOptions::default()).unwrap();
        let got = embedder.embed(&texts(&refs)).unwrap();
        assert_matches(&got, &refs, name);
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn plain_transformers_directory_needs_a_pooling_mode() {
    let tmp = std::env::temp_dir().join(format!("fletcher-plain-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(minilm_dir().join(file), tmp.join(file)).unwrap();
    }
    let err = Embedder::load_dir("plain", &tmp, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, EngineError::NoPooling { .. }), "{err}");
    assert!(err.to_string().contains("pooling"), "{err}");

    let refs = references("minilm_reference.jsonl");
    let short: Vec<_> = refs.into_iter().take(10).collect();
    let embedder = Embedder::load_dir(
        "plain",
        &tmp,
        &LoadOptions {
            pooling: Some(Pooling::Mean),
            normalize: Some(true),
            max_seq_length: Some(256),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let got = embedder.embed(&texts(&short)).unwrap();
    assert_matches(&got, &short, "plain directory");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn over_long_text_is_refused_when_truncation_is_off() {
    let embedder = minilm(&LoadOptions::default());
    let long = vec!["word ".repeat(600)];
    let err = embedder
        .embed_with(
            &long,
            &EmbedOptions {
                truncate: false,
                ..EmbedOptions::default()
            },
        )
        .unwrap_err();
    match err {
        EngineError::TooLong {
            index,
            tokens,
            limit,
        } => {
            assert_eq!(index, 0);
            assert_eq!(limit, 256);
            assert_eq!(tokens, 602, "600 words plus [CLS] and [SEP]");
        }
        other => panic!("expected TooLong, got {other}"),
    }
}

#[test]
fn dimensions_shorten_before_normalizing() {
    let embedder = minilm(&LoadOptions::default());
    let text = vec!["Matryoshka vectors keep their head.".to_owned()];
    let full = embedder
        .embed_with(
            &text,
            &EmbedOptions {
                normalize: Some(false),
                ..EmbedOptions::default()
            },
        )
        .unwrap();
    let short = embedder
        .embed_with(
            &text,
            &EmbedOptions {
                dimensions: Some(64),
                ..EmbedOptions::default()
            },
        )
        .unwrap();
    assert_eq!(short[0].len(), 64);
    let norm: f32 = full[0][..64].iter().map(|x| x * x).sum::<f32>().sqrt();
    for (s, f) in short[0].iter().zip(&full[0][..64]) {
        assert!((s - f / norm).abs() < 1e-6);
    }
    assert!(embedder
        .embed_with(
            &text,
            &EmbedOptions {
                dimensions: Some(1000),
                ..EmbedOptions::default()
            }
        )
        .is_err());
}
