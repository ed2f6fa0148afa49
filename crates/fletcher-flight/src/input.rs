//! Reading a client's stream of `FlightData`: the descriptor of its first
//! message, its schema, then its record batches.

use std::future::ready;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError as ArrowFlightError;
use arrow_flight::{FlightData, FlightDescriptor};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use tonic::{Status, Streaming};

use crate::error::InputError;

/// A client's stream once its schema has arrived.
pub(crate) struct Input {
    /// The descriptor of the first message that had one.
    pub descriptor: Option<FlightDescriptor>,
    /// The schema of every batch.
    pub schema: SchemaRef,
    /// The record batches, in order.
    pub batches: BoxStream<'static, Result<RecordBatch, Status>>,
}

/// Reads `messages` up to the schema. Messages without an IPC header (a
/// descriptor or metadata alone) are skipped.
pub(crate) async fn open(mut messages: Streaming<FlightData>) -> Result<Input, Status> {
    let mut descriptor = None;
    let first = loop {
        let Some(message) = messages.message().await? else {
            return Err(InputError::NoSchema.into());
        };
        if descriptor.is_none() {
            descriptor.clone_from(&message.flight_descriptor);
        }
        if !message.data_header.is_empty() {
            break message;
        }
    };
    let rest = messages.filter(|m| ready(!matches!(m, Ok(m) if m.data_header.is_empty())));
    let data = stream::once(ready(Ok(first)))
        .chain(rest)
        .map_err(ArrowFlightError::from);
    let mut decoder = FlightDataDecoder::new(data);
    let schema = match decoder.next().await {
        Some(Ok(decoded)) => match decoded.payload {
            DecodedPayload::Schema(schema) => schema,
            _ => {
                return Err(
                    InputError::Decode("the first IPC message is not a schema".to_owned()).into(),
                )
            }
        },
        Some(Err(e)) => return Err(decode_status(e)),
        None => return Err(InputError::NoSchema.into()),
    };
    let batches = stream::try_unfold((decoder, 0usize), |(mut decoder, rows)| async move {
        loop {
            let Some(next) = decoder.next().await else {
                return Ok(None);
            };
            match next.map_err(decode_status)?.payload {
                DecodedPayload::RecordBatch(batch) => {
                    let n = batch.num_rows();
                    return Ok(Some((batch, (decoder, rows + n))));
                }
                DecodedPayload::None => {}
                DecodedPayload::Schema(_) => return Err(InputError::SchemaChanged { rows }.into()),
            }
        }
    })
    .boxed();
    Ok(Input {
        descriptor,
        schema,
        batches,
    })
}

/// The status for a failure to read the client's stream: the transport's
/// own status, or `INVALID_ARGUMENT` for data that does not decode.
fn decode_status(e: ArrowFlightError) -> Status {
    match e {
        ArrowFlightError::Tonic(status) => *status,
        other => InputError::Decode(other.to_string()).into(),
    }
}
