//! Tests on small synthetic model directories written to a temp dir: the
//! forward pass against a naive reference (BERT and XLM-R positions),
//! dtype conversion, unaligned maps, name variants, and every load error.

mod common;

use std::path::Path;

use common::*;
use fletcher_model::bert::BertModel;
use fletcher_model::{
    Architecture, BufferPool, Encoder, ModelDir, ModelError, PoolLimits, RaggedBatch, Stage,
};

const IDS: [u32; 9] = [1, 5, 7, 2, 3, 19, 0, 4, 11];
const TYPES: [u32; 9] = [0, 0, 1, 1, 0, 0, 0, 1, 1];
const CU: [usize; 4] = [0, 4, 5, 9];

fn batch() -> RaggedBatch<'static> {
    RaggedBatch {
        input_ids: &IDS,
        token_type_ids: &TYPES,
        cu_seqlens: &CU,
    }
}

fn bert_dir(dtype: Dt, prefix: &str, old_ln: bool, misalign: bool) -> TempDir {
    let dir = TempDir::new("bert");
    let mut tensors = tiny_tensors(dtype, prefix, old_ln, TYPES_N);
    tensors.insert(
        0,
        T {
            name: "embeddings.position_ids".into(),
            dtype: Dt::I64,
            shape: vec![1, 16],
            data: (0..16).map(|i| i as f32).collect(),
        },
    );
    write_model_dir(&dir.0, &tiny_config("bert", TYPES_N, 0), &tensors, misalign);
    dir
}

const TYPES_N: usize = 2;

fn load(dir: &Path) -> Result<Box<dyn Encoder>, ModelError> {
    ModelDir::open(dir)?.load_encoder()
}

fn load_bert(dir: &Path) -> BertModel {
    let d = ModelDir::open(dir).unwrap();
    BertModel::load(
        &d.config,
        d.architecture().unwrap(),
        &d.config_path,
        &d.weights_path,
    )
    .unwrap()
}

#[test]
fn bert_matches_naive_reference() {
    let dir = bert_dir(Dt::F32, "", false, false);
    let enc = load(&dir.0).unwrap();
    assert_eq!((enc.hidden_size(), enc.max_positions()), (H, POSITIONS));
    let hidden = enc.forward(&batch()).unwrap();
    let reference = Reference::new(
        &dir.0.join("model.safetensors"),
        "",
        H,
        HEADS,
        LAYERS,
        1e-12,
    );
    for w in CU.windows(2) {
        let want = reference.forward(&IDS[w[0]..w[1]], &TYPES[w[0]..w[1]], 0);
        let d = max_diff(&hidden[w[0] * H..w[1] * H], &want);
        assert!(d < 1e-5, "max abs diff {d}");
    }
    let model = load_bert(&dir.0);
    assert!(model.word_embeddings_mapped());
    assert_eq!(model.architecture(), Architecture::Bert);
}

#[test]
fn pooled_forward_reuses_buffers_and_gives_the_same_bits() {
    let dir = bert_dir(Dt::F32, "", false, false);
    let enc = load(&dir.0).unwrap();
    let pool = BufferPool::new(PoolLimits::default());
    // Batches of growing, shrinking and equal sizes over one pool: stale
    // contents of reused buffers must never leak into the result.
    let cuts: [&[usize]; 5] = [
        &[0, 4, 5, 9],
        &[0, 1],
        &[0, 4, 5, 9],
        &[0, 2, 3],
        &[0, 4, 5, 9],
    ];
    for cu in cuts {
        let n = *cu.last().unwrap();
        let b = RaggedBatch {
            input_ids: &IDS[..n],
            token_type_ids: &TYPES[..n],
            cu_seqlens: cu,
        };
        let mut stages = Vec::new();
        let got = enc
            .forward_pooled(&b, &pool, &mut |stage, _| stages.push(stage))
            .unwrap();
        assert_eq!(got, enc.forward(&b).unwrap(), "{cu:?}");
        assert_eq!(
            stages,
            [Stage::Embeddings, Stage::Attention, Stage::FeedForward]
        );
        pool.give_back(got);
    }
    let stats = pool.stats();
    assert!(stats.hits > 0, "{stats:?}");
    assert!(stats.buffers <= PoolLimits::default().max_buffers);
    // Five buffers a batch; after the first batch the rest mostly hit.
    assert_eq!(stats.hits + stats.misses, 25);
}

#[test]
fn xlm_roberta_offsets_positions_and_ignores_token_types() {
    let dir = TempDir::new("xlmr");
    let tensors = tiny_tensors(Dt::F32, "roberta.", false, 1);
    write_model_dir(&dir.0, &tiny_config("xlm-roberta", 1, 1), &tensors, false);
    let enc = load(&dir.0).unwrap();
    assert_eq!(enc.max_positions(), POSITIONS - 2);
    let hidden = enc.forward(&batch()).unwrap();
    let reference = Reference::new(
        &dir.0.join("model.safetensors"),
        "roberta.",
        H,
        HEADS,
        LAYERS,
        1e-12,
    );
    let zeros = [0u32; 9];
    for w in CU.windows(2) {
        let want = reference.forward(&IDS[w[0]..w[1]], &zeros[w[0]..w[1]], 2);
        let d = max_diff(&hidden[w[0] * H..w[1] * H], &want);
        assert!(d < 1e-5, "max abs diff {d}");
    }
    let ids = vec![3u32; POSITIONS - 2];
    enc.forward(&RaggedBatch {
        input_ids: &ids,
        token_type_ids: &[],
        cu_seqlens: &[0, ids.len()],
    })
    .unwrap();
    let ids = vec![3u32; POSITIONS - 1];
    let err = enc
        .forward(&RaggedBatch {
            input_ids: &ids,
            token_type_ids: &[],
            cu_seqlens: &[0, ids.len()],
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::SequenceTooLong {
                len: 15,
                max: 14,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn half_precision_files_load_to_the_same_values() {
    let f32_dir = bert_dir(Dt::F32, "", false, false);
    let base = load(&f32_dir.0).unwrap();
    let want = base.forward(&batch()).unwrap();
    let tables = (VOCAB + POSITIONS + TYPES_N) * H * 4;
    for dt in [Dt::F16, Dt::BF16] {
        let dir = bert_dir(dt, "", false, false);
        let enc = load(&dir.0).unwrap();
        assert_eq!(enc.forward(&batch()).unwrap(), want, "{dt:?}");
        assert_eq!(
            enc.packed_bytes(),
            base.packed_bytes() + tables,
            "{dt:?} tables are converted"
        );
        assert!(!load_bert(&dir.0).word_embeddings_mapped());
    }
}

#[test]
fn unaligned_map_falls_back_to_a_copy() {
    let want = load(&bert_dir(Dt::F32, "", false, false).0)
        .unwrap()
        .forward(&batch())
        .unwrap();
    let dir = bert_dir(Dt::F32, "", false, true);
    let bytes = std::fs::read(dir.0.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + header) % 4, 2, "the test file must be unaligned");
    assert_eq!(load(&dir.0).unwrap().forward(&batch()).unwrap(), want);
    assert!(!load_bert(&dir.0).word_embeddings_mapped());
}

#[test]
fn prefixed_names_and_gamma_beta_layer_norms() {
    let want = load(&bert_dir(Dt::F32, "", false, false).0)
        .unwrap()
        .forward(&batch())
        .unwrap();
    for prefix in ["bert.", "model.", "0.auto_model."] {
        let dir = bert_dir(Dt::F32, prefix, true, false);
        assert_eq!(
            load(&dir.0).unwrap().forward(&batch()).unwrap(),
            want,
            "{prefix}"
        );
    }
}

/// Writes the tiny BERT with `edit` applied to its tensors.
fn edited(edit: impl FnOnce(&mut Vec<T>)) -> TempDir {
    let dir = TempDir::new("edit");
    let mut tensors = tiny_tensors(Dt::F32, "", false, TYPES_N);
    edit(&mut tensors);
    write_model_dir(&dir.0, &tiny_config("bert", TYPES_N, 0), &tensors, false);
    dir
}

fn weights_file(dir: &TempDir) -> String {
    dir.0.join("model.safetensors").display().to_string()
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let dir = bert_dir(Dt::F32, "", false, false);
    let path = dir.0.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for (what, content) in [
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
        ("header only", bytes[..100].to_vec()),
        ("empty", Vec::new()),
        (
            "huge header length",
            [&u64::MAX.to_le_bytes()[..], &bytes[8..]].concat(),
        ),
        (
            "not json",
            [&bytes[..8], &vec![b'x'; bytes.len() - 8][..]].concat(),
        ),
    ] {
        std::fs::write(&path, &content).unwrap();
        let err = load(&dir.0).unwrap_err();
        assert!(
            matches!(err, ModelError::Safetensors { .. }),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().contains(&weights_file(&dir)),
            "{what}: {err}"
        );
    }
}

#[test]
fn missing_tensor_is_named() {
    let name = "encoder.layer.1.output.dense.bias";
    let dir = edited(|t| t.retain(|t| t.name != name));
    let err = load(&dir.0).unwrap_err();
    match &err {
        ModelError::MissingTensor { name: n, path } => {
            assert_eq!(n, name);
            assert_eq!(path, &dir.0.join("model.safetensors"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(name) && err.to_string().contains(&weights_file(&dir)));

    let dir = edited(|t| t.retain(|t| t.name != "encoder.layer.0.attention.output.LayerNorm.bias"));
    let err = load(&dir.0).unwrap_err();
    assert!(
        err.to_string()
            .contains("encoder.layer.0.attention.output.LayerNorm.bias"),
        "{err}"
    );

    let dir = edited(|t| t.retain(|t| !t.name.starts_with("embeddings.word_embeddings")));
    let err = load(&dir.0).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("embeddings.word_embeddings.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_and_dtype() {
    let name = "encoder.layer.0.intermediate.dense.weight";
    let dir = edited(|ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![INTER - 1, H];
        t.data.truncate((INTER - 1) * H);
    });
    let err = load(&dir.0).unwrap_err();
    match &err {
        ModelError::ShapeMismatch {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(
                (n.as_str(), expected.as_slice(), found.as_slice()),
                (name, &[INTER, H][..], &[INTER - 1, H][..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains(name) && err.to_string().contains("[16, 8]"),
        "{err}"
    );

    let dir = edited(|ts| {
        ts.iter_mut()
            .find(|t| t.name.contains("position_embeddings"))
            .unwrap()
            .dtype = Dt::I64
    });
    let err = load(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnsupportedDtype { dtype, .. } if dtype == "I64"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("embeddings.position_embeddings.weight"),
        "{err}"
    );
}

fn with_config(edit: impl FnOnce(&mut serde_json::Value)) -> TempDir {
    let dir = bert_dir(Dt::F32, "", false, false);
    let mut c = tiny_config("bert", TYPES_N, 0);
    edit(&mut c);
    std::fs::write(dir.0.join("config.json"), c.to_string()).unwrap();
    dir
}

#[test]
fn config_errors() {
    let dir = bert_dir(Dt::F32, "", false, false);
    std::fs::write(dir.0.join("config.json"), "{\"hidden_size\": 8,").unwrap();
    let err = ModelDir::open(&dir.0).unwrap_err();
    assert!(matches!(err, ModelError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let dir = with_config(|c| {
        c["model_type"] = "t5".into();
        c["architectures"] = serde_json::json!(["T5EncoderModel"]);
    });
    let err = load(&dir.0).unwrap_err();
    match &err {
        ModelError::UnknownArchitecture { architecture, path } => {
            assert_eq!(architecture, "t5");
            assert_eq!(path, &dir.0.join("config.json"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("t5") && err.to_string().contains("config.json"));

    for (key, value, needle) in [
        ("hidden_act", serde_json::json!("mish"), "mish"),
        ("num_attention_heads", serde_json::json!(3), "multiple"),
        (
            "position_embedding_type",
            serde_json::json!("relative_key"),
            "relative_key",
        ),
        ("hidden_size", serde_json::Value::Null, "hidden_size"),
    ] {
        let dir = with_config(|c| {
            if value.is_null() {
                c.as_object_mut().unwrap().remove(key);
            } else {
                c[key] = value.clone();
            }
        });
        let err = load(&dir.0).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidConfig { .. }),
            "{key}: {err:?}"
        );
        assert!(err.to_string().contains(needle), "{key}: {err}");
    }
}

#[test]
fn missing_files() {
    let nowhere = std::env::temp_dir().join("fletcher-model-does-not-exist");
    assert!(matches!(
        ModelDir::open(&nowhere),
        Err(ModelError::MissingFile { .. })
    ));

    for (file, needle) in [
        ("tokenizer.json", "tokenizer.json"),
        ("config.json", "config.json"),
    ] {
        let dir = bert_dir(Dt::F32, "", false, false);
        std::fs::remove_file(dir.0.join(file)).unwrap();
        let err = ModelDir::open(&dir.0).unwrap_err();
        assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
        assert!(err.to_string().contains(needle), "{err}");
    }

    let dir = bert_dir(Dt::F32, "", false, false);
    std::fs::rename(
        dir.0.join("model.safetensors"),
        dir.0.join("pytorch_model.bin"),
    )
    .unwrap();
    let err = ModelDir::open(&dir.0).unwrap_err();
    assert!(
        err.to_string().contains("model.safetensors")
            && err.to_string().contains("pytorch_model.bin"),
        "{err}"
    );
}

fn write(dir: &Path, file: &str, text: &str) {
    let p = dir.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const MODULES: &str = r#"[
  {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
  {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
]"#;

#[test]
fn sentence_transformers_files() {
    use fletcher_model::Pooling::*;
    let dir = bert_dir(Dt::F32, "", false, false);
    let s = ModelDir::open(&dir.0).unwrap().sentence;
    assert!(s.pooling.is_none() && !s.normalize && s.max_seq_length.is_none());

    write(&dir.0, "modules.json", MODULES);
    write(
        &dir.0,
        "sentence_bert_config.json",
        r#"{"max_seq_length": 128, "do_lower_case": true}"#,
    );
    write(
        &dir.0,
        "1_Pooling/config.json",
        r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true,
            "pooling_mode_max_tokens": true, "pooling_mode_lasttoken": true}"#,
    );
    write(
        &dir.0,
        "config_sentence_transformers.json",
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"}"#,
    );
    let s = ModelDir::open(&dir.0).unwrap().sentence;
    assert_eq!(s.pooling, Some(vec![Cls, Max, Mean, LastToken]));
    assert!(s.normalize && s.do_lower_case && !s.exclude_prompt_from_pooling);
    assert_eq!(s.max_seq_length, Some(128));
    assert_eq!(s.prompts.get("query").map(String::as_str), Some("query: "));
    assert_eq!(s.prompts.len(), 2);
    assert_eq!(s.default_prompt_name.as_deref(), Some("query"));

    write(
        &dir.0,
        "1_Pooling/config.json",
        r#"{"embedding_dimension": 8, "pooling_mode": ["lasttoken", "mean_sqrt_len_tokens"], "include_prompt": false}"#,
    );
    let s = ModelDir::open(&dir.0).unwrap().sentence;
    assert_eq!(s.pooling, Some(vec![LastToken, MeanSqrtLen]));
    assert!(s.exclude_prompt_from_pooling);

    write(
        &dir.0,
        "1_Pooling/config.json",
        r#"{"pooling_mode": "weightedmean"}"#,
    );
    let err = ModelDir::open(&dir.0).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedModule { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("weightedmean"), "{err}");

    write(
        &dir.0,
        "1_Pooling/config.json",
        r#"{"pooling_mode_mean_tokens": false}"#,
    );
    assert_eq!(
        ModelDir::open(&dir.0).unwrap().sentence.pooling,
        Some(vec![Mean])
    );

    let dense = MODULES.replace("models.Normalize", "models.Dense");
    write(&dir.0, "modules.json", &dense);
    let err = ModelDir::open(&dir.0).unwrap_err();
    assert!(
        err.to_string()
            .contains("sentence_transformers.models.Dense"),
        "{err}"
    );
    assert!(err.to_string().contains("modules.json"), "{err}");

    write(&dir.0, "modules.json", "[{\"path\": 1}]");
    let err = ModelDir::open(&dir.0).unwrap_err();
    assert!(
        matches!(err, ModelError::Json { .. }) && err.to_string().contains("modules.json"),
        "{err}"
    );
}
