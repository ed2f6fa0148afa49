//! The options of one Flight call: the descriptor's `cmd` JSON or path, and
//! the `x-fletcher-format` header.

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::FlightDescriptor;
use fletcher_engine::EmbedOptions;
use serde::Deserialize;
use tonic::metadata::MetadataMap;

use crate::columns::VectorFormat;
use crate::error::InputError;

/// Request header choosing the element type of the `embedding` lists:
/// `f32` (the default) or `f16`.
pub const FORMAT_HEADER: &str = "x-fletcher-format";

/// Options a client gives as the JSON `cmd` of the first message's
/// descriptor, for example `{"format":"f16","dimensions":128}`. Every field
/// is optional and unknown fields are refused. A path descriptor of one
/// element names the dataset instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallOptions {
    /// Element type of the `embedding` lists; wins over the header.
    pub format: Option<VectorFormat>,
    /// L2-normalize the vectors; absent follows the model.
    pub normalize: Option<bool>,
    /// Keep only the first `dimensions` components.
    pub dimensions: Option<usize>,
    /// Text put before every input.
    pub prompt: Option<String>,
    /// Cut over-long texts (the default) instead of refusing them.
    pub truncate: Option<bool>,
    /// Dataset the rows belong to: a metrics label, and for `DoPut` the
    /// descriptor path the sink receives.
    pub dataset: Option<String>,
}

impl CallOptions {
    /// The options of a descriptor: JSON in a `cmd`, the dataset in a path
    /// of one element, the defaults when there is no descriptor or it is
    /// empty.
    pub fn from_descriptor(descriptor: Option<&FlightDescriptor>) -> Result<Self, InputError> {
        let Some(descriptor) = descriptor else {
            return Ok(Self::default());
        };
        match descriptor.r#type() {
            DescriptorType::Cmd if descriptor.cmd.iter().all(u8::is_ascii_whitespace) => {
                Ok(Self::default())
            }
            DescriptorType::Cmd => serde_json::from_slice(&descriptor.cmd)
                .map_err(|e| InputError::Options(e.to_string())),
            DescriptorType::Path => match descriptor.path.as_slice() {
                [] => Ok(Self::default()),
                [dataset] if !dataset.is_empty() => Ok(Self {
                    dataset: Some(dataset.clone()),
                    ..Self::default()
                }),
                other => Err(InputError::Path(other.to_vec())),
            },
            DescriptorType::Unknown => Ok(Self::default()),
        }
    }

    /// The engine's options for these.
    pub fn embed_options(&self) -> EmbedOptions {
        EmbedOptions {
            normalize: self.normalize,
            truncate: self.truncate.unwrap_or(true),
            truncation_side: None,
            prompt: self.prompt.clone(),
            dimensions: self.dimensions,
        }
    }
}

/// The format the `x-fletcher-format` header asks for, if any.
pub(crate) fn header_format(metadata: &MetadataMap) -> Result<Option<VectorFormat>, InputError> {
    let Some(value) = metadata.get(FORMAT_HEADER) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| InputError::FormatHeader("not ASCII".to_owned()))?;
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(InputError::FormatHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_json_sets_options_and_refuses_unknown_fields() {
        let d = FlightDescriptor::new_cmd(r#"{"format":"f16","dimensions":64,"normalize":false}"#);
        let o = CallOptions::from_descriptor(Some(&d)).unwrap();
        assert_eq!(o.format, Some(VectorFormat::F16));
        assert_eq!(o.dimensions, Some(64));
        assert_eq!(o.embed_options().normalize, Some(false));

        let d = FlightDescriptor::new_cmd(r#"{"fromat":"f16"}"#);
        let err = CallOptions::from_descriptor(Some(&d)).unwrap_err();
        assert!(err.to_string().contains("unknown field `fromat`"), "{err}");

        let d = FlightDescriptor::new_cmd(r#"{"format":"f8"}"#);
        let err = CallOptions::from_descriptor(Some(&d)).unwrap_err();
        assert!(
            err.to_string().contains("unknown vector format `f8`"),
            "{err}"
        );
    }

    #[test]
    fn a_path_names_the_dataset() {
        let d = FlightDescriptor::new_path(vec!["docs".to_owned()]);
        let o = CallOptions::from_descriptor(Some(&d)).unwrap();
        assert_eq!(o.dataset.as_deref(), Some("docs"));
        let d = FlightDescriptor::new_path(vec!["a".to_owned(), "b".to_owned()]);
        assert!(CallOptions::from_descriptor(Some(&d)).is_err());
    }

    #[test]
    fn the_header_names_a_format() {
        let mut m = MetadataMap::new();
        assert_eq!(header_format(&m).unwrap(), None);
        m.insert(FORMAT_HEADER, "F16".parse().unwrap());
        assert_eq!(header_format(&m).unwrap(), Some(VectorFormat::F16));
        m.insert(FORMAT_HEADER, "bf16".parse().unwrap());
        assert!(header_format(&m).is_err());
    }
}
