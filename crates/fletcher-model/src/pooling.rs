//! Pooling of token hidden states into one vector per sequence, with the
//! semantics of sentence-transformers' `Pooling` module.

use std::fmt;
use std::str::FromStr;

/// How the hidden states of one sequence become its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's hidden state (`[CLS]` / `<s>`).
    Cls,
    /// The average over all tokens of the sequence.
    Mean,
    /// The element-wise maximum over all tokens of the sequence.
    Max,
    /// The sum over all tokens divided by the square root of their number.
    MeanSqrtLen,
    /// The last token's hidden state.
    LastToken,
}

impl Pooling {
    /// Every mode, in the order sentence-transformers concatenates them when
    /// a legacy configuration switches several on.
    pub const ALL: [Pooling; 5] = [
        Pooling::Cls,
        Pooling::Max,
        Pooling::Mean,
        Pooling::MeanSqrtLen,
        Pooling::LastToken,
    ];

    /// The name sentence-transformers uses for the mode.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
            Pooling::LastToken => "lasttoken",
        }
    }
}

/// The name given to [`Pooling::from_str`] is not a known mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pooling mode `{0}` (expected cls, mean, max, mean_sqrt_len_tokens or lasttoken)")]
pub struct UnknownPooling(pub String);

impl FromStr for Pooling {
    type Err = UnknownPooling;

    /// Accepts the sentence-transformers names and a few common spellings,
    /// case-insensitively: `cls`, `mean`, `max`, `mean_sqrt_len_tokens` /
    /// `mean_sqrt_len`, `lasttoken` / `last_token` / `last`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "cls" | "cls_token" => Pooling::Cls,
            "mean" | "mean_tokens" => Pooling::Mean,
            "max" | "max_tokens" => Pooling::Max,
            "mean_sqrt_len_tokens" | "mean_sqrt_len" => Pooling::MeanSqrtLen,
            "lasttoken" | "last_token" | "last" => Pooling::LastToken,
            _ => return Err(UnknownPooling(s.to_string())),
        })
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pools each sequence of `hidden` (`[tokens, hidden_size]`) into `out`
/// (`[sequences, hidden_size * modes.len()]`); each sequence's output holds
/// one block of `hidden_size` per mode, in the order of `modes`.
///
/// `cu_seqlens` holds the sequence offsets (0 first, `tokens` last). Sums are
/// accumulated in `f64`. A sequence with no tokens pools to zeros in every
/// mode.
///
/// # Panics
///
/// When the buffers disagree with each other: `hidden.len()` is not
/// `cu_seqlens.last() * hidden_size`, `out` has the wrong length, or
/// `cu_seqlens` is empty or decreasing. These are caller bugs, not data
/// errors; the encoders validate batches before producing `hidden`.
pub fn pool(
    hidden: &[f32],
    hidden_size: usize,
    cu_seqlens: &[usize],
    modes: &[Pooling],
    out: &mut [f32],
) {
    let (Some(&first), Some(&tokens)) = (cu_seqlens.first(), cu_seqlens.last()) else {
        panic!("pool: cu_seqlens must not be empty");
    };
    assert_eq!(first, 0, "pool: cu_seqlens must start at 0");
    assert_eq!(
        hidden.len(),
        tokens * hidden_size,
        "pool: hidden has the wrong length"
    );
    let sequences = cu_seqlens.len() - 1;
    let width = hidden_size * modes.len();
    assert_eq!(
        out.len(),
        sequences * width,
        "pool: out has the wrong length"
    );
    if width == 0 {
        return;
    }
    let mut sum = vec![0f64; hidden_size];
    for (s, dst) in out.chunks_exact_mut(width).enumerate() {
        let (start, end) = (cu_seqlens[s], cu_seqlens[s + 1]);
        assert!(start <= end, "pool: cu_seqlens must not decrease");
        let seq = &hidden[start * hidden_size..end * hidden_size];
        let len = end - start;
        let mut sum_ready = false;
        for (mode, block) in modes.iter().zip(dst.chunks_exact_mut(hidden_size)) {
            if len == 0 {
                block.fill(0.0);
                continue;
            }
            match mode {
                Pooling::Cls => block.copy_from_slice(&seq[..hidden_size]),
                Pooling::LastToken => block.copy_from_slice(&seq[(len - 1) * hidden_size..]),
                Pooling::Max => {
                    block.copy_from_slice(&seq[..hidden_size]);
                    for row in seq.chunks_exact(hidden_size).skip(1) {
                        for (b, &v) in block.iter_mut().zip(row) {
                            *b = b.max(v);
                        }
                    }
                }
                Pooling::Mean | Pooling::MeanSqrtLen => {
                    if !sum_ready {
                        sum.fill(0.0);
                        for row in seq.chunks_exact(hidden_size) {
                            for (acc, &v) in sum.iter_mut().zip(row) {
                                *acc += f64::from(v);
                            }
                        }
                        sum_ready = true;
                    }
                    let denom = if *mode == Pooling::Mean {
                        len as f64
                    } else {
                        (len as f64).sqrt()
                    };
                    for (b, &acc) in block.iter_mut().zip(&sum) {
                        *b = (acc / denom) as f32;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in Pooling::ALL {
            assert_eq!(mode.to_string().parse::<Pooling>(), Ok(mode));
        }
        assert_eq!("mean_sqrt_len".parse::<Pooling>(), Ok(Pooling::MeanSqrtLen));
        assert_eq!("last_token".parse::<Pooling>(), Ok(Pooling::LastToken));
        assert_eq!("CLS".parse::<Pooling>(), Ok(Pooling::Cls));
        let err = "weightedmean".parse::<Pooling>().unwrap_err();
        assert!(err.to_string().contains("weightedmean"));
    }

    #[test]
    fn known_values() {
        // Two sequences of 2-dim tokens: [[1,-2],[3,4],[5,0]] and [[-1,7]].
        let hidden = [1.0, -2.0, 3.0, 4.0, 5.0, 0.0, -1.0, 7.0];
        let cu = [0, 3, 4];
        let modes = Pooling::ALL;
        let mut out = vec![0.0; 2 * 2 * modes.len()];
        pool(&hidden, 2, &cu, &modes, &mut out);
        let s3 = 3f32.sqrt();
        let expected = [
            // cls, max, mean, mean_sqrt_len, lasttoken
            1.0,
            -2.0,
            5.0,
            4.0,
            3.0,
            2.0 / 3.0,
            9.0 / s3,
            2.0 / s3,
            5.0,
            0.0, //
            -1.0,
            7.0,
            -1.0,
            7.0,
            -1.0,
            7.0,
            -1.0,
            7.0,
            -1.0,
            7.0,
        ];
        for (i, (a, b)) in out.iter().zip(expected).enumerate() {
            assert!((a - b).abs() < 1e-6, "element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn empty_sequence_pools_to_zero() {
        let hidden = [2.0, 3.0];
        let mut out = vec![9.0; 3 * 2 * 2];
        pool(
            &hidden,
            2,
            &[0, 0, 1, 1],
            &[Pooling::Mean, Pooling::Max],
            &mut out,
        );
        assert_eq!(
            out,
            [0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]
        );
    }
}
