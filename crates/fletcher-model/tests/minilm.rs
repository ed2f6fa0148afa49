//! Tests against the real all-MiniLM-L6-v2 directory: configuration parsing,
//! shapes, parity with sentence-transformers reference vectors and with a
//! naive `f64` forward pass, and input errors.

mod common;

use common::{max_diff, minilm, Reference};
use fletcher_model::bert::BertModel;
use fletcher_model::{pool, Architecture, ModelDir, ModelError, Pooling, RaggedBatch};

#[derive(serde::Deserialize)]
struct Fixture {
    input_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/minilm_reference.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ragged(seqs: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>, Vec<usize>) {
    let mut cu = vec![0];
    let ids: Vec<u32> = seqs.iter().flatten().copied().collect();
    for s in seqs {
        cu.push(cu.last().unwrap() + s.len());
    }
    let types = vec![0; ids.len()];
    (ids, types, cu)
}

#[test]
fn parses_configuration() {
    let Some(path) = minilm() else { return };
    let dir = ModelDir::open(&path).unwrap();
    let c = &dir.config;
    assert_eq!(c.architectures, ["BertModel"]);
    assert_eq!(c.model_type, "bert");
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.num_hidden_layers,
            c.intermediate_size
        ),
        (384, 12, 6, 1536)
    );
    assert_eq!(
        (c.vocab_size, c.max_position_embeddings, c.type_vocab_size),
        (30522, 512, 2)
    );
    assert_eq!(c.hidden_act, "gelu");
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.pad_token_id, Some(0));
    assert_eq!(dir.architecture().unwrap(), Architecture::Bert);
    let s = &dir.sentence;
    assert_eq!(s.max_seq_length, Some(256));
    assert!(!s.do_lower_case);
    assert_eq!(s.pooling.as_deref(), Some(&[Pooling::Mean][..]));
    assert!(s.normalize);
    assert!(s.prompts.is_empty());
    assert_eq!(s.default_prompt_name, None);
    assert!(!s.exclude_prompt_from_pooling);
    assert_eq!(dir.tokenizer_path, path.join("tokenizer.json"));
    assert_eq!(dir.weights_path, path.join("model.safetensors"));
}

#[test]
fn shapes_sizes_and_flops() {
    let Some(path) = minilm() else { return };
    let enc = ModelDir::open(&path).unwrap().load_encoder().unwrap();
    assert_eq!(enc.hidden_size(), 384);
    assert_eq!(enc.max_positions(), 512);
    let (h, m, layers) = (384usize, 1536usize, 6usize);
    let per_layer = (3 * h * h + 3 * h) + (h * h + h) + (m * h + m) + (h * m + h) + 4 * h;
    // With Strassen's algorithm on, each linear layer also holds seven
    // combinations of its weight's quarters: 7/4 of the weight.
    let weights = layers * (3 * h * h + h * h + m * h + h * m);
    let strassen = if fletcher_kernels::strassen_enabled() {
        7 * weights / 4
    } else {
        0
    };
    let expected = (layers * per_layer + 2 * h + strassen) * 4;
    // Packing may pad, but the word-embedding table (30522 x 384 f32) must
    // stay in the map rather than be counted here.
    assert!(
        enc.packed_bytes() >= expected,
        "{} < {expected}",
        enc.packed_bytes()
    );
    assert!(
        enc.packed_bytes() < expected + 30522 * 384 * 4,
        "{}",
        enc.packed_bytes()
    );
    let dir = ModelDir::open(&path).unwrap();
    let model = BertModel::load(
        &dir.config,
        Architecture::Bert,
        &dir.config_path,
        &dir.weights_path,
    )
    .unwrap();
    assert!(model.word_embeddings_mapped());
    assert_eq!(model.num_layers(), 6);
    let n = 10.0;
    let (hf, mf) = (h as f64, m as f64);
    let want = 6.0 * (2.0 * n * (4.0 * hf * hf + 2.0 * hf * mf) + 4.0 * n * n * hf);
    assert_eq!(enc.flops(10), want);
    assert!(enc.flops(20) > 2.0 * enc.flops(10));
}

#[test]
fn matches_sentence_transformers() {
    let Some(path) = minilm() else { return };
    let dir = ModelDir::open(&path).unwrap();
    let enc = dir.load_encoder().unwrap();
    let fx = fixture();
    let (ids, types, cu) = ragged(&fx.input_ids);
    let batch = RaggedBatch {
        input_ids: &ids,
        token_type_ids: &types,
        cu_seqlens: &cu,
    };
    let hidden = enc.forward(&batch).unwrap();
    assert_eq!(hidden.len(), ids.len() * 384);
    let modes = dir.sentence.pooling.clone().unwrap();
    let mut pooled = vec![0.0; fx.input_ids.len() * 384];
    pool(&hidden, 384, &cu, &modes, &mut pooled);
    for (got, want) in pooled.chunks_mut(384).zip(&fx.embeddings) {
        let norm = got.iter().map(|v| v * v).sum::<f32>().sqrt();
        got.iter_mut().for_each(|v| *v /= norm);
        let cos: f64 = got
            .iter()
            .zip(want)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
            / want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!(
            "all-MiniLM-L6-v2 vs sentence-transformers: cosine {cos:.8}, max abs diff {diff:.2e}"
        );
        assert!(cos >= 0.99999, "cosine {cos}");
        assert!(diff <= 1e-4, "max abs diff {diff}");
    }
}

#[test]
fn hidden_states_match_cls_of_transformers() {
    let Some(path) = minilm() else { return };
    let enc = ModelDir::open(&path).unwrap().load_encoder().unwrap();
    let ids = [101, 7592, 2088, 102];
    let hidden = enc
        .forward(&RaggedBatch {
            input_ids: &ids,
            token_type_ids: &[],
            cu_seqlens: &[0, 4],
        })
        .unwrap();
    // transformers AutoModel, last_hidden_state[0, 0, :8] for "Hello world".
    let cls = [
        0.176445, 0.039366, 0.077902, 0.258541, -0.158426, -0.37371, 0.095437, -0.073228,
    ];
    for (i, (a, b)) in hidden[..8].iter().zip(cls).enumerate() {
        assert!((a - b).abs() < 1e-4, "dim {i}: {a} vs {b}");
    }
}

#[test]
fn matches_naive_reference_and_is_batch_independent() {
    let Some(path) = minilm() else { return };
    let enc = ModelDir::open(&path).unwrap().load_encoder().unwrap();
    let seqs = vec![
        vec![101, 2023, 2003, 102, 2117, 102],
        vec![101, 7592, 102],
        vec![101, 102],
    ];
    let (ids, _, cu) = ragged(&seqs);
    let types = vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0];
    let batch = RaggedBatch {
        input_ids: &ids,
        token_type_ids: &types,
        cu_seqlens: &cu,
    };
    let hidden = enc.forward(&batch).unwrap();
    let reference = Reference::new(&path.join("model.safetensors"), "", 384, 12, 6, 1e-12);
    for (s, w) in cu.windows(2).enumerate() {
        let got = &hidden[w[0] * 384..w[1] * 384];
        let want = reference.forward(&ids[w[0]..w[1]], &types[w[0]..w[1]], 0);
        let d = max_diff(got, &want);
        assert!(d < 1e-4, "sequence {s}: max abs diff {d}");
        let alone = enc
            .forward(&RaggedBatch {
                input_ids: &ids[w[0]..w[1]],
                token_type_ids: &types[w[0]..w[1]],
                cu_seqlens: &[0, w[1] - w[0]],
            })
            .unwrap();
        let d = alone
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-6, "sequence {s} alone vs in batch: {d}");
    }
}

#[test]
fn rejects_bad_input() {
    let Some(path) = minilm() else { return };
    let enc = ModelDir::open(&path).unwrap().load_encoder().unwrap();
    let ids = [101, 30522, 102];
    match enc.forward(&RaggedBatch {
        input_ids: &ids,
        token_type_ids: &[],
        cu_seqlens: &[0, 3],
    }) {
        Err(ModelError::TokenOutOfRange {
            position: 1,
            id: 30522,
            vocab_size: 30522,
        }) => {}
        other => panic!("{other:?}"),
    }
    let ids = [101, 102];
    match enc.forward(&RaggedBatch {
        input_ids: &ids,
        token_type_ids: &[0, 2],
        cu_seqlens: &[0, 2],
    }) {
        Err(ModelError::TokenTypeOutOfRange {
            position: 1,
            id: 2,
            type_vocab_size: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    let long = vec![100u32; 513];
    let err = enc
        .forward(&RaggedBatch {
            input_ids: &long,
            token_type_ids: &[],
            cu_seqlens: &[0, 0, 513],
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::SequenceTooLong {
                sequence: 1,
                len: 513,
                max: 512
            }
        ),
        "{err}"
    );
    let err = enc
        .forward(&RaggedBatch {
            input_ids: &ids,
            token_type_ids: &[],
            cu_seqlens: &[0, 3],
        })
        .unwrap_err();
    assert!(matches!(err, ModelError::InvalidBatch(_)), "{err}");
    let empty = enc.forward(&RaggedBatch {
        input_ids: &[],
        token_type_ids: &[],
        cu_seqlens: &[0],
    });
    assert!(empty.unwrap().is_empty());
}
