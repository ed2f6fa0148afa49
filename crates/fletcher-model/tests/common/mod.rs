//! Shared test support: a writer for small safetensors model directories and
//! a naive `f64` BERT reference that reads tensors straight from the file.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::SafeTensors;

pub const MINILM: &str = "/work/shared/models/all-MiniLM-L6-v2";

/// The MiniLM directory, or `None` (with a notice) when it is not present.
pub fn minilm() -> Option<PathBuf> {
    let p = PathBuf::from(MINILM);
    if p.join("model.safetensors").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: {MINILM} not present");
        None
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("fletcher-model-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dt {
    F32,
    F16,
    BF16,
    I64,
}

/// One tensor to write: name, dtype, shape and values.
#[derive(Clone, Debug)]
pub struct T {
    pub name: String,
    pub dtype: Dt,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Writes a safetensors file by hand. With `misalign`, the header is padded
/// so the data section starts 2 bytes past a 4-byte boundary.
pub fn write_safetensors(path: &Path, tensors: &[T], misalign: bool) {
    let mut header = BTreeMap::new();
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        for &v in &t.data {
            match t.dtype {
                Dt::F32 => data.extend_from_slice(&v.to_le_bytes()),
                Dt::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                Dt::BF16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                Dt::I64 => data.extend_from_slice(&(v as i64).to_le_bytes()),
            }
        }
        let dtype = format!("{:?}", t.dtype);
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::to_string(&header).unwrap();
    let target = if misalign { 2 } else { 0 };
    while (8 + h.len()) % 8 != target {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// Deterministic pseudo-random values; [`Rng::vec`] rounds them to BF16
/// precision so that F32, F16 and BF16 files hold exactly the same numbers.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 % 255) as i32 - 127) as f32 / 256.0
    }
    pub fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|_| half::bf16::from_f32(offset + scale * self.next()).to_f32())
            .collect()
    }
}

/// Sizes of the synthetic models.
pub const H: usize = 8;
pub const HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const INTER: usize = 16;
pub const VOCAB: usize = 20;
pub const POSITIONS: usize = 16;
pub const TYPES: usize = 2;

/// Tensors of a small random BERT, named with `prefix`, layer norms as
/// `weight`/`bias` or (with `old_ln`) `gamma`/`beta`.
pub fn tiny_tensors(dtype: Dt, prefix: &str, old_ln: bool, types: usize) -> Vec<T> {
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        out.push(T {
            name: format!("{prefix}{name}"),
            dtype,
            shape,
            data,
        });
    };
    let (g, b) = if old_ln {
        ("gamma", "beta")
    } else {
        ("weight", "bias")
    };
    push(
        "embeddings.word_embeddings.weight".into(),
        vec![VOCAB, H],
        rng.vec(VOCAB * H, 2.0, 0.0),
    );
    push(
        "embeddings.position_embeddings.weight".into(),
        vec![POSITIONS, H],
        rng.vec(POSITIONS * H, 1.0, 0.0),
    );
    push(
        "embeddings.token_type_embeddings.weight".into(),
        vec![types, H],
        rng.vec(types * H, 1.0, 0.0),
    );
    push(
        format!("embeddings.LayerNorm.{g}"),
        vec![H],
        rng.vec(H, 0.5, 1.0),
    );
    push(
        format!("embeddings.LayerNorm.{b}"),
        vec![H],
        rng.vec(H, 0.5, 0.0),
    );
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for part in ["query", "key", "value"] {
            push(
                format!("{p}.attention.self.{part}.weight"),
                vec![H, H],
                rng.vec(H * H, 1.0, 0.0),
            );
            push(
                format!("{p}.attention.self.{part}.bias"),
                vec![H],
                rng.vec(H, 0.5, 0.0),
            );
        }
        push(
            format!("{p}.attention.output.dense.weight"),
            vec![H, H],
            rng.vec(H * H, 1.0, 0.0),
        );
        push(
            format!("{p}.attention.output.dense.bias"),
            vec![H],
            rng.vec(H, 0.5, 0.0),
        );
        push(
            format!("{p}.attention.output.LayerNorm.{g}"),
            vec![H],
            rng.vec(H, 0.5, 1.0),
        );
        push(
            format!("{p}.attention.output.LayerNorm.{b}"),
            vec![H],
            rng.vec(H, 0.5, 0.0),
        );
        push(
            format!("{p}.intermediate.dense.weight"),
            vec![INTER, H],
            rng.vec(INTER * H, 1.0, 0.0),
        );
        push(
            format!("{p}.intermediate.dense.bias"),
            vec![INTER],
            rng.vec(INTER, 0.5, 0.0),
        );
        push(
            format!("{p}.output.dense.weight"),
            vec![H, INTER],
            rng.vec(H * INTER, 1.0, 0.0),
        );
        push(
            format!("{p}.output.dense.bias"),
            vec![H],
            rng.vec(H, 0.5, 0.0),
        );
        push(
            format!("{p}.output.LayerNorm.{g}"),
            vec![H],
            rng.vec(H, 0.5, 1.0),
        );
        push(
            format!("{p}.output.LayerNorm.{b}"),
            vec![H],
            rng.vec(H, 0.5, 0.0),
        );
    }
    out
}

/// config.json of the synthetic model.
pub fn tiny_config(model_type: &str, types: usize, pad: u32) -> serde_json::Value {
    serde_json::json!({
        "architectures": [if model_type == "bert" { "BertModel" } else { "XLMRobertaModel" }],
        "model_type": model_type,
        "hidden_size": H, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "intermediate_size": INTER, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "max_position_embeddings": POSITIONS, "type_vocab_size": types, "vocab_size": VOCAB,
        "pad_token_id": pad, "position_embedding_type": "absolute"
    })
}

/// Writes a complete model directory (config, tokenizer placeholder, weights).
pub fn write_model_dir(dir: &Path, config: &serde_json::Value, tensors: &[T], misalign: bool) {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    write_safetensors(&dir.join("model.safetensors"), tensors, misalign);
}

fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        let mut t = a;
        for k in (1..=80).rev() {
            t = a + (k as f64 / 2.0) / t;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * t)
    };
    r.copysign(x)
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// A BERT forward pass written as plainly as possible, in `f64`, for one
/// sequence. `position_offset` is 0 for BERT and `pad + 1` for RoBERTa.
pub struct Reference {
    bytes: Vec<u8>,
    prefix: String,
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
}

impl Reference {
    pub fn new(
        weights: &Path,
        prefix: &str,
        hidden: usize,
        heads: usize,
        layers: usize,
        eps: f64,
    ) -> Self {
        Self {
            bytes: std::fs::read(weights).unwrap(),
            prefix: prefix.to_string(),
            hidden,
            heads,
            layers,
            eps,
        }
    }

    fn t(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let full = format!("{}{name}", self.prefix);
        let v = st.tensor(&full).unwrap_or_else(|_| panic!("{full}"));
        match v.dtype() {
            safetensors::Dtype::F32 => v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F16 => v
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64())
                .collect(),
            d => panic!("{d:?}"),
        }
    }

    fn ln(&self, x: &mut [f64], base: &str) {
        let (g, b) = (
            self.t(&format!("{base}.weight")),
            self.t(&format!("{base}.bias")),
        );
        for row in x.chunks_mut(self.hidden) {
            let mean = row.iter().sum::<f64>() / row.len() as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / row.len() as f64;
            for (i, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + self.eps).sqrt() * g[i] + b[i];
            }
        }
    }

    fn linear(&self, x: &[f64], base: &str, inp: usize) -> Vec<f64> {
        let (w, b) = (
            self.t(&format!("{base}.weight")),
            self.t(&format!("{base}.bias")),
        );
        let out = b.len();
        let mut y = Vec::new();
        for row in x.chunks(inp) {
            for j in 0..out {
                y.push(b[j] + (0..inp).map(|k| row[k] * w[j * inp + k]).sum::<f64>());
            }
        }
        y
    }

    /// Final hidden states `[len, hidden]` of one sequence.
    pub fn forward(&self, ids: &[u32], types: &[u32], position_offset: usize) -> Vec<f64> {
        let h = self.hidden;
        let (word, pos, tt) = (
            self.t("embeddings.word_embeddings.weight"),
            self.t("embeddings.position_embeddings.weight"),
            self.t("embeddings.token_type_embeddings.weight"),
        );
        let mut x = Vec::new();
        for (p, (&id, &ty)) in ids.iter().zip(types).enumerate() {
            for i in 0..h {
                x.push(
                    word[id as usize * h + i]
                        + pos[(p + position_offset) * h + i]
                        + tt[ty as usize * h + i],
                );
            }
        }
        self.ln(&mut x, "embeddings.LayerNorm");
        let n = ids.len();
        let d = h / self.heads;
        for l in 0..self.layers {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&x, &format!("{p}.attention.self.query"), h);
            let k = self.linear(&x, &format!("{p}.attention.self.key"), h);
            let v = self.linear(&x, &format!("{p}.attention.self.value"), h);
            let mut ctx = vec![0.0; n * h];
            for hd in 0..self.heads {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|e| q[i * h + hd * d + e] * k[j * h + hd * d + e])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..n {
                        let pj = (s[j] - m).exp() / z;
                        for e in 0..d {
                            ctx[i * h + hd * d + e] += pj * v[j * h + hd * d + e];
                        }
                    }
                }
            }
            let mut a = self.linear(&ctx, &format!("{p}.attention.output.dense"), h);
            a.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
            self.ln(&mut a, &format!("{p}.attention.output.LayerNorm"));
            x = a;
            let mut inter = self.linear(&x, &format!("{p}.intermediate.dense"), h);
            inter.iter_mut().for_each(|v| *v = gelu(*v));
            let inter_w = inter.len() / n;
            let mut o = self.linear(&inter, &format!("{p}.output.dense"), inter_w);
            o.iter_mut().zip(&x).for_each(|(o, x)| *o += x);
            self.ln(&mut o, &format!("{p}.output.LayerNorm"));
            x = o;
        }
        x
    }
}

/// Largest absolute difference between an `f32` result and an `f64` reference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}
