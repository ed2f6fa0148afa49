//! Memory-mapped safetensors weights.
//!
//! [`Weights::open`] maps a `.safetensors` file and validates its header with
//! the `safetensors` crate (offsets cover the data exactly, sizes match
//! dtypes and shapes), so a truncated or corrupt file is reported at open
//! time rather than when a tensor is read.
//!
//! Tensors stored as F32, F16 or BF16 all read as `f32`. An F32 tensor whose
//! bytes sit at a 4-byte aligned address of the map (the case for files
//! written by the `safetensors` libraries, whose header is padded to 8 bytes)
//! is borrowed from the map without a copy; otherwise, and for F16 / BF16,
//! it is converted into an owned buffer. [`MappedTensor`] keeps large tables
//! such as word embeddings in the map for the lifetime of a model.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::SafeTensors;

use crate::ModelError;

/// A memory-mapped safetensors file with a validated header.
pub struct Weights {
    path: PathBuf,
    mmap: Mmap,
    metadata: Metadata,
    data_start: usize,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.metadata.tensors().len())
            .field("bytes", &self.mmap.len())
            .finish()
    }
}

impl Weights {
    /// Maps `path` and parses its header.
    ///
    /// The file must not be modified or truncated by another process while
    /// the returned value (or any model built from it) is alive: the map
    /// reflects such changes, and shrinking the file makes reads fault.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io_err = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only and private to this value; Rust code
        // only ever sees it as `&[u8]`. Soundness additionally relies on no
        // other process modifying the file while it is mapped, which is the
        // documented contract of this function (model files are read-only
        // inputs).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|source| ModelError::Safetensors {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            data_start: 8 + header_len,
        })
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of all tensors in the file, in storage order.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.metadata.info(name).map(|i| i.shape.as_slice())
    }

    fn info(&self, name: &str, expected: &[usize]) -> Result<&TensorInfo, ModelError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                path: self.path.clone(),
            })?;
        if info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                path: self.path.clone(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        match info.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(info),
            other => Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                path: self.path.clone(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let (s, e) = info.data_offsets;
        // `read_metadata` checked that the offsets tile the data section,
        // which ends exactly at the end of the file.
        &self.mmap[self.data_start + s..self.data_start + e]
    }

    /// Reads `name` as `f32`, checking that its shape is `expected`.
    ///
    /// Borrows from the map when the tensor is little-endian F32 at an
    /// aligned address; copies and converts otherwise.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<Cow<'_, [f32]>, ModelError> {
        let info = self.info(name, expected)?;
        Ok(decode(info.dtype, self.bytes(info)))
    }

    /// Like [`Weights::f32`], but the result keeps the map alive and can be
    /// stored in a model: no copy is made when the tensor can be borrowed.
    pub fn mapped(
        self: &Arc<Self>,
        name: &str,
        expected: &[usize],
    ) -> Result<MappedTensor, ModelError> {
        let info = self.info(name, expected)?;
        let bytes = self.bytes(info);
        let storage = match decode(info.dtype, bytes) {
            Cow::Borrowed(_) => Storage::Mapped {
                weights: Arc::clone(self),
                start: self.data_start + info.data_offsets.0,
                end: self.data_start + info.data_offsets.1,
            },
            Cow::Owned(v) => Storage::Owned(v),
        };
        Ok(MappedTensor {
            storage,
            shape: info.shape.clone(),
        })
    }
}

/// Converts raw little-endian tensor bytes of a float dtype to `f32`.
fn decode(dtype: Dtype, bytes: &[u8]) -> Cow<'_, [f32]> {
    match dtype {
        Dtype::F32 => {
            if cfg!(target_endian = "little") {
                if let Ok(slice) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    return Cow::Borrowed(slice);
                }
            }
            Cow::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        Dtype::F16 => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Cow::Owned(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        ),
        // `Weights::info` rejects every other dtype before bytes are decoded.
        _ => Cow::Owned(Vec::new()),
    }
}

enum Storage {
    Mapped {
        weights: Arc<Weights>,
        start: usize,
        end: usize,
    },
    Owned(Vec<f32>),
}

/// An `f32` tensor that either borrows from a [`Weights`] map (which it keeps
/// alive) or owns a converted copy.
pub struct MappedTensor {
    storage: Storage,
    shape: Vec<usize>,
}

impl fmt::Debug for MappedTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedTensor")
            .field("shape", &self.shape)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl MappedTensor {
    /// The elements, row-major.
    pub fn as_slice(&self) -> &[f32] {
        match &self.storage {
            // The range was accepted by `bytemuck::try_cast_slice` when this
            // value was built, and the map's address and length never change,
            // so this cast succeeds.
            Storage::Mapped {
                weights,
                start,
                end,
            } => bytemuck::cast_slice(&weights.mmap[*start..*end]),
            Storage::Owned(v) => v,
        }
    }

    /// The stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Whether the elements are read from the map without a copy.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// Bytes held outside the map: 0 when mapped, the copy's size otherwise.
    pub fn owned_bytes(&self) -> usize {
        match &self.storage {
            Storage::Mapped { .. } => 0,
            Storage::Owned(v) => v.len() * std::mem::size_of::<f32>(),
        }
    }
}
