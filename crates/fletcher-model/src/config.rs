//! Model directories: the transformers `config.json`, the sentence-transformers
//! files around it (`modules.json`, `sentence_bert_config.json`, the pooling
//! module's `config.json`, `config_sentence_transformers.json`) and the
//! locations of the tokenizer and weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::bert::BertModel;
use crate::{Encoder, ModelError, Pooling};

/// The fields of a transformers `config.json` that the encoders use.
///
/// Every field has a default so that configs of unsupported architectures
/// still parse and are then rejected by name in [`ModelDir::load_encoder`];
/// a zero size is reported there as [`ModelError::InvalidConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Model classes, e.g. `["BertModel"]`; `null` reads as empty.
    #[serde(deserialize_with = "null_as_default")]
    pub architectures: Vec<String>,
    /// e.g. `bert`, `xlm-roberta`; `null` reads as empty.
    #[serde(deserialize_with = "null_as_default")]
    pub model_type: String,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation name (default `gelu`).
    pub hidden_act: String,
    /// Layer-norm epsilon (default `1e-12`).
    pub layer_norm_eps: f64,
    /// Rows of the position-embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table (default 2).
    pub type_vocab_size: usize,
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Padding token id; RoBERTa-style models offset positions by it.
    pub pad_token_id: Option<u32>,
    /// Only `absolute` is implemented (the default).
    #[serde(deserialize_with = "null_as_default")]
    pub position_embedding_type: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            architectures: Vec::new(),
            model_type: String::new(),
            hidden_size: 0,
            num_attention_heads: 0,
            num_hidden_layers: 0,
            intermediate_size: 0,
            hidden_act: "gelu".to_string(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: 0,
            type_vocab_size: 2,
            vocab_size: 0,
            pad_token_id: None,
            position_embedding_type: "absolute".to_string(),
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The encoder families Fletcher implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT and models sharing its layout: MiniLM, BGE, E5, GTE (BERT-based).
    Bert,
    /// RoBERTa and XLM-RoBERTa: BERT layers with positions offset past the
    /// padding id and a single token type.
    Roberta,
}

impl ModelConfig {
    /// Parses a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        read_json(path)
    }

    /// The architecture named by `model_type`, or when that is absent by the
    /// first entry of `architectures`. `path` (the config file) goes into
    /// the error.
    pub fn architecture(&self, path: &Path) -> Result<Architecture, ModelError> {
        let unknown = |architecture: &str| ModelError::UnknownArchitecture {
            architecture: architecture.to_string(),
            path: path.to_path_buf(),
        };
        match self.model_type.as_str() {
            "bert" => return Ok(Architecture::Bert),
            "roberta" | "xlm-roberta" | "camembert" => return Ok(Architecture::Roberta),
            "" => {}
            other => return Err(unknown(other)),
        }
        let Some(first) = self.architectures.first() else {
            return Err(unknown("(no model_type or architectures)"));
        };
        if first.starts_with("Bert") {
            Ok(Architecture::Bert)
        } else if first.starts_with("Roberta") || first.starts_with("XLMRoberta") {
            Ok(Architecture::Roberta)
        } else {
            Err(unknown(first))
        }
    }
}

/// What the sentence-transformers files of a model directory say about
/// turning hidden states into an embedding.
#[derive(Debug, Clone, Default)]
pub struct SentenceTransformerConfig {
    /// Truncation length from `sentence_bert_config.json`.
    pub max_seq_length: Option<usize>,
    /// Whether text is lower-cased before tokenization (default false).
    pub do_lower_case: bool,
    /// Pooling modes, concatenated in this order; `None` when the directory
    /// has no pooling module.
    pub pooling: Option<Vec<Pooling>>,
    /// Whether embeddings are L2-normalized after pooling.
    pub normalize: bool,
    /// Named prompts from `config_sentence_transformers.json`.
    pub prompts: HashMap<String, String>,
    /// The prompt applied when the caller names none.
    pub default_prompt_name: Option<String>,
    /// The pooling module has `include_prompt: false`: tokens of a prompt
    /// prepended to the text are left out of pooling.
    pub exclude_prompt_from_pooling: bool,
}

/// A model directory in the Hugging Face / sentence-transformers layout.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The directory.
    pub path: PathBuf,
    /// The parsed `config.json`.
    pub config: ModelConfig,
    /// The sentence-transformers settings (defaults when absent).
    pub sentence: SentenceTransformerConfig,
    /// `tokenizer.json`; [`ModelDir::open`] checks it exists.
    pub tokenizer_path: PathBuf,
    /// `model.safetensors`; [`ModelDir::open`] checks it exists.
    pub weights_path: PathBuf,
    /// The `config.json` that was parsed.
    pub config_path: PathBuf,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    do_lower_case: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StConfig {
    #[serde(deserialize_with = "null_as_default")]
    prompts: HashMap<String, String>,
    default_prompt_name: Option<String>,
}

impl ModelDir {
    /// Reads the configuration files of the directory at `path` and checks
    /// that `tokenizer.json` and `model.safetensors` are present.
    ///
    /// Fails on a missing or malformed `config.json`, a missing tokenizer or
    /// weights file, and on sentence-transformers modules that would change
    /// the vectors but are not implemented (e.g. `Dense`, weighted-mean
    /// pooling). Weights are not read here; see [`ModelDir::load_encoder`].
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if !path.is_dir() {
            return Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                reason: "expected a model directory".to_string(),
            });
        }
        let modules_path = path.join("modules.json");
        let modules: Option<Vec<ModuleEntry>> = if modules_path.is_file() {
            Some(read_json(&modules_path)?)
        } else {
            None
        };

        let mut model_root = path.to_path_buf();
        let mut sentence = SentenceTransformerConfig::default();
        let mut pooling_dir = None;
        for m in modules.iter().flatten() {
            let module = m.kind.rsplit('.').next().unwrap_or(&m.kind);
            let dir = path.join(&m.path);
            match module {
                "Transformer" => {
                    if !m.path.is_empty() && dir.join("config.json").is_file() {
                        model_root = dir;
                    }
                }
                "Pooling" => pooling_dir = Some(dir),
                "Normalize" => sentence.normalize = true,
                _ => {
                    return Err(ModelError::UnsupportedModule {
                        module: m.kind.clone(),
                        path: modules_path,
                    })
                }
            }
        }
        if modules.is_none() && path.join("1_Pooling/config.json").is_file() {
            pooling_dir = Some(path.join("1_Pooling"));
        }
        if let Some(dir) = pooling_dir {
            let file = dir.join("config.json");
            let (modes, include_prompt) = parse_pooling(&file)?;
            sentence.pooling = Some(modes);
            sentence.exclude_prompt_from_pooling = !include_prompt;
        }

        let sbert_path = model_root.join("sentence_bert_config.json");
        if sbert_path.is_file() {
            let sbert: SentenceBertConfig = read_json(&sbert_path)?;
            sentence.max_seq_length = sbert.max_seq_length;
            sentence.do_lower_case = sbert.do_lower_case.unwrap_or(false);
        }
        let st_path = path.join("config_sentence_transformers.json");
        if st_path.is_file() {
            let st: StConfig = read_json(&st_path)?;
            sentence.prompts = st.prompts;
            sentence.default_prompt_name = st.default_prompt_name;
        }

        let config_path = model_root.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::MissingFile {
                path: config_path,
                reason: "a transformers config.json is required".to_string(),
            });
        }
        let config = ModelConfig::from_file(&config_path)?;

        let tokenizer_path = [
            path.join("tokenizer.json"),
            model_root.join("tokenizer.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| ModelError::MissingFile {
            path: path.join("tokenizer.json"),
            reason: "a Hugging Face tokenizers file is required".to_string(),
        })?;

        let weights_path = model_root.join("model.safetensors");
        if !weights_path.is_file() {
            let reason = if model_root.join("model.safetensors.index.json").is_file() {
                "sharded safetensors checkpoints are not supported; a single model.safetensors is"
            } else if model_root.join("pytorch_model.bin").is_file() {
                "only safetensors weights load; pytorch_model.bin must be converted"
            } else {
                "the model weights are required"
            };
            return Err(ModelError::MissingFile {
                path: weights_path,
                reason: reason.to_string(),
            });
        }

        Ok(Self {
            path: path.to_path_buf(),
            config,
            sentence,
            tokenizer_path,
            weights_path,
            config_path,
        })
    }

    /// The architecture `config.json` names (see [`ModelConfig::architecture`]).
    pub fn architecture(&self) -> Result<Architecture, ModelError> {
        self.config.architecture(&self.config_path)
    }

    /// Maps the weights and builds the encoder for the directory's
    /// architecture, packing its linear layers.
    pub fn load_encoder(&self) -> Result<Box<dyn Encoder>, ModelError> {
        let arch = self.architecture()?;
        let model = BertModel::load(&self.config, arch, &self.config_path, &self.weights_path)?;
        Ok(Box::new(model))
    }
}

/// Reads the pooling module's config: the modes in concatenation order and
/// `include_prompt`. Understands both the `pooling_mode` key (a name or a
/// list) and the older `pooling_mode_*` booleans; neither means mean pooling.
fn parse_pooling(path: &Path) -> Result<(Vec<Pooling>, bool), ModelError> {
    let value: serde_json::Value = read_json(path)?;
    let invalid = |message: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        message,
    };
    let Some(obj) = value.as_object() else {
        return Err(invalid("expected a JSON object".to_string()));
    };
    let include_prompt = match obj.get("include_prompt") {
        None | Some(serde_json::Value::Null) => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid(format!("include_prompt is {v}")))?,
    };
    let names: Vec<String> = match obj.get("pooling_mode") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("pooling_mode must list names".to_string()))?,
        Some(other) => return Err(invalid(format!("pooling_mode is {other}"))),
        None => {
            const LEGACY: [(&str, &str); 6] = [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ];
            let on: Vec<String> = LEGACY
                .iter()
                .filter(|(key, _)| obj.get(*key).and_then(|v| v.as_bool()).unwrap_or(false))
                .map(|(_, name)| name.to_string())
                .collect();
            if on.is_empty() {
                vec!["mean".to_string()]
            } else {
                on
            }
        }
    };
    let modes = names
        .iter()
        .map(|n| {
            n.parse::<Pooling>()
                .map_err(|_| ModelError::UnsupportedModule {
                    module: format!("pooling mode `{n}`"),
                    path: path.to_path_buf(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((modes, include_prompt))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_nulls() {
        let c: ModelConfig = serde_json::from_str(
            r#"{"architectures": null, "model_type": "bert", "hidden_size": 8}"#,
        )
        .unwrap();
        assert!(c.architectures.is_empty());
        assert_eq!(c.hidden_size, 8);
        assert_eq!(c.hidden_act, "gelu");
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.type_vocab_size, 2);
        assert_eq!(c.position_embedding_type, "absolute");
    }

    #[test]
    fn architecture_dispatch() {
        let p = Path::new("config.json");
        let cfg = |mt: &str, arch: &[&str]| ModelConfig {
            model_type: mt.to_string(),
            architectures: arch.iter().map(|s| s.to_string()).collect(),
            ..ModelConfig::default()
        };
        assert_eq!(
            cfg("bert", &[]).architecture(p).unwrap(),
            Architecture::Bert
        );
        assert_eq!(
            cfg("xlm-roberta", &[]).architecture(p).unwrap(),
            Architecture::Roberta
        );
        assert_eq!(
            cfg("", &["BertModel"]).architecture(p).unwrap(),
            Architecture::Bert
        );
        assert_eq!(
            cfg("", &["XLMRobertaModel"]).architecture(p).unwrap(),
            Architecture::Roberta
        );
        match cfg("mpnet", &["MPNetModel"]).architecture(p) {
            Err(ModelError::UnknownArchitecture { architecture, .. }) => {
                assert_eq!(architecture, "mpnet")
            }
            other => panic!("expected UnknownArchitecture, got {other:?}"),
        }
        assert!(cfg("", &[]).architecture(p).is_err());
    }
}
