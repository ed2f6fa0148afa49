//! The Flight service: `DoExchange` and `DoPut` embed streamed rows,
//! `DoAction` answers `health` and `info`.

use std::future::ready;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError as ArrowFlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::batches_to_flight_data;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use fletcher_engine::{EmbedOptions, EmbedRequest, Engine};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::columns::{StreamLayout, VectorFormat};
use crate::error::{engine_status, error_type, sink_status, InputError};
use crate::input::{self, Input};
use crate::options::{header_format, CallOptions};
use crate::sink::{SinkError, SinkHandle};

/// Most rows embedded in one engine call, and in one record batch of an
/// answer. Fewer when the engine admits fewer texts at once
/// (`max_concurrent_inputs`).
pub const MAX_SLICE_ROWS: usize = 1024;

/// Largest Flight message the service decodes: a client record batch over
/// 64 MiB is refused with `RESOURCE_EXHAUSTED` by the gRPC layer.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Answer record batches queued between embedding and sending, per call.
const ANSWERS_AHEAD: usize = 2;

/// The actions `DoAction` answers, with their descriptions.
const ACTIONS: [(&str, &str); 2] = [
    (
        "health",
        "JSON {status, model, sink}: status is ok or unhealthy",
    ),
    (
        "info",
        "JSON {model_id, dimension, max_seq_length, formats, max_slice_rows, sink}",
    ),
];

/// The Fletcher Flight service over an engine, forwarding `DoPut` rows to a
/// sink when it has one.
#[derive(Debug, Clone)]
pub struct FletcherFlight {
    engine: Engine,
    sink: Option<SinkHandle>,
}

impl FletcherFlight {
    /// The service for `engine`; `DoPut` needs `sink`.
    pub fn new(engine: Engine, sink: Option<SinkHandle>) -> Self {
        Self { engine, sink }
    }

    /// The gRPC service, taking client messages up to 64 MiB.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    fn slice_rows(&self) -> usize {
        MAX_SLICE_ROWS
            .min(self.engine.config().max_concurrent_inputs)
            .max(1)
    }

    fn call(&self, method: &'static str) -> Call {
        let metrics = self.engine.metrics();
        metrics
            .flight_requests_total
            .with_label_values(&[method])
            .inc();
        Call {
            method,
            started: Instant::now(),
            duration: metrics.flight_duration_seconds.with_label_values(&[method]),
            errors: metrics.errors_total.clone(),
            bytes_sent: metrics.flight_bytes_sent_total.clone(),
        }
    }

    /// How the rows of `input` are embedded and answered.
    fn plan(&self, input: &Input, header: Option<VectorFormat>) -> Result<Plan, InputError> {
        let options = CallOptions::from_descriptor(input.descriptor.as_ref())?;
        let max = self.engine.embedder().dimension();
        let dimension = options.dimensions.unwrap_or(max);
        if dimension == 0 || dimension > max {
            return Err(InputError::Dimensions {
                got: dimension,
                max,
            });
        }
        let format = options.format.or(header).unwrap_or_default();
        Ok(Plan {
            layout: StreamLayout::new(&input.schema, dimension, format)?,
            embed: options.embed_options(),
            dataset: options.dataset,
        })
    }

    fn health(&self) -> serde_json::Value {
        let status = if self.engine.is_healthy() {
            "ok"
        } else {
            "unhealthy"
        };
        json!({
            "status": status,
            "model": self.engine.embedder().model_id(),
            "sink": self.sink.as_ref().map(SinkHandle::status),
        })
    }

    fn info(&self) -> serde_json::Value {
        let embedder = self.engine.embedder();
        json!({
            "model_id": embedder.model_id(),
            "dimension": embedder.dimension(),
            "max_seq_length": embedder.max_seq_length(),
            "formats": ["f32", "f16"],
            "max_slice_rows": self.slice_rows(),
            "sink": self.sink.is_some(),
        })
    }
}

/// Metrics of one call; records its duration when dropped, which for
/// streaming calls is when the answer stream ends.
struct Call {
    method: &'static str,
    started: Instant,
    duration: Histogram,
    errors: IntCounterVec,
    bytes_sent: IntCounter,
}

impl Call {
    /// Counts `status` in `fletcher_errors_total` and hands it back.
    fn fail(&self, status: Status) -> Status {
        if let Some(kind) = error_type(status.code()) {
            self.errors.with_label_values(&[kind]).inc();
        }
        tracing::debug!(method = self.method, code = ?status.code(), message = status.message(), "flight call failed");
        status
    }

    fn sent(&self, data: &FlightData) {
        let bytes = data.data_header.len() + data.data_body.len() + data.app_metadata.len();
        self.bytes_sent.inc_by(bytes as u64);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The options and answer layout of one streaming call.
#[derive(Debug, Clone)]
struct Plan {
    layout: StreamLayout,
    embed: EmbedOptions,
    dataset: Option<String>,
}

impl Plan {
    /// `slice` with its `embedding` column; `first_row` is its position in
    /// the stream.
    async fn embed(
        &self,
        engine: &Engine,
        slice: &RecordBatch,
        first_row: usize,
    ) -> Result<RecordBatch, Status> {
        let texts = self.layout.texts(slice, first_row)?;
        let request = EmbedRequest {
            texts,
            options: self.embed.clone(),
            dataset: self.dataset.clone(),
        };
        let embedded = engine.embed(request).await.map_err(|e| engine_status(&e))?;
        self.layout
            .attach(slice, &embedded.vectors)
            .map_err(|e| Status::internal(format!("could not build the answer batch: {e}")))
    }
}

/// `batch` cut into slices of at most `rows` rows; an empty batch stays one
/// empty slice.
fn slices(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    let n = batch.num_rows();
    if n == 0 {
        return vec![batch.clone()];
    }
    (0..n)
        .step_by(rows)
        .map(|offset| batch.slice(offset, rows.min(n - offset)))
        .collect()
}

/// The Flight messages of an answer: the schema of `schema`, then every
/// batch of `answers`, empty ones included.
///
/// `FlightDataEncoder` sends nothing for a batch without rows, which would
/// lose the boundary of a client's empty batch; this encodes each batch with
/// an encoder of its own (dictionaries hydrated, large batches split as
/// usual) and an empty batch as one message of no rows.
fn encode_answers(
    schema: SchemaRef,
    answers: impl Stream<Item = Result<RecordBatch, ArrowFlightError>> + Send + 'static,
) -> impl Stream<Item = Result<FlightData, ArrowFlightError>> + Send + 'static {
    let head = FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(stream::empty());
    // The schema as sent: dictionaries replaced by their values.
    let sent = head.known_schema().unwrap_or_else(|| schema.clone());
    let body = answers
        .and_then(move |batch| encode_batch(schema.clone(), sent.clone(), batch))
        .map_ok(|messages| stream::iter(messages.into_iter().map(Ok)))
        .try_flatten();
    head.chain(body)
}

/// The messages of one answer batch, without the schema.
async fn encode_batch(
    schema: SchemaRef,
    sent: SchemaRef,
    batch: RecordBatch,
) -> Result<Vec<FlightData>, ArrowFlightError> {
    if batch.num_rows() == 0 {
        let empty = RecordBatch::new_empty(sent.clone());
        let messages = batches_to_flight_data(&sent, [&empty])?;
        // The first message is the schema.
        return Ok(messages.into_iter().skip(1).collect());
    }
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::iter([Ok(batch)]))
        .skip(1)
        .try_collect()
        .await
}

/// Embeds every batch of an exchange, slice by slice, into `answers`;
/// stops early when the client is gone.
async fn exchange_rows(
    engine: Engine,
    plan: Plan,
    mut batches: BoxStream<'static, Result<RecordBatch, Status>>,
    slice_rows: usize,
    answers: &mpsc::Sender<Result<RecordBatch, ArrowFlightError>>,
) -> Result<(), Status> {
    let mut row = 0;
    while let Some(batch) = batches.try_next().await? {
        for slice in slices(&batch, slice_rows) {
            let answer = plan.embed(&engine, &slice, row).await?;
            row += slice.num_rows();
            if answers.send(Ok(answer)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Embeds every batch of a put, slice by slice, into the sink; answers the
/// rows accepted.
async fn put_rows(
    engine: Engine,
    plan: Plan,
    mut batches: BoxStream<'static, Result<RecordBatch, Status>>,
    sink: SinkHandle,
    dataset: String,
    slice_rows: usize,
) -> Result<PutResult, Status> {
    let mut accepted = 0;
    while let Some(batch) = batches.try_next().await? {
        for slice in slices(&batch, slice_rows) {
            let rows = slice.num_rows();
            if rows == 0 {
                continue;
            }
            let room = sink.room();
            if room < rows {
                let full = SinkError::Full {
                    rows,
                    buffered: sink.capacity() - room,
                    capacity: sink.capacity(),
                };
                return Err(sink_status(&full, accepted));
            }
            let answer = plan.embed(&engine, &slice, accepted).await?;
            sink.submit_to(&dataset, answer)
                .map_err(|e| sink_status(&e, accepted))?;
            accepted += rows;
        }
    }
    let body = json!({ "rows": accepted }).to_string();
    Ok(PutResult {
        app_metadata: body.into_bytes().into(),
    })
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is not offered; use DoExchange, DoPut or DoAction"
    ))
}

#[tonic::async_trait]
impl FlightService for FletcherFlight {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let call = self.call("Handshake");
        Err(call.fail(unimplemented("Handshake")))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let call = self.call("ListFlights");
        Err(call.fail(unimplemented("ListFlights")))
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self.call("GetFlightInfo");
        Err(call.fail(unimplemented("GetFlightInfo")))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let call = self.call("PollFlightInfo");
        Err(call.fail(unimplemented("PollFlightInfo")))
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let call = self.call("GetSchema");
        Err(call.fail(unimplemented("GetSchema")))
    }

    async fn do_get(
        &self,
        _request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let call = self.call("DoGet");
        Err(call.fail(unimplemented("DoGet")))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let call = self.call("DoPut");
        let Some(sink) = self.sink.clone() else {
            return Err(call.fail(Status::failed_precondition(
                "this server has no Flight sink to put rows to; start it with --sink grpc://HOST:PORT",
            )));
        };
        let header = header_format(request.metadata()).map_err(|e| call.fail(e.into()))?;
        let input = input::open(request.into_inner())
            .await
            .map_err(|s| call.fail(s))?;
        let plan = self.plan(&input, header).map_err(|e| call.fail(e.into()))?;
        let dataset = plan
            .dataset
            .clone()
            .unwrap_or_else(|| sink.dataset().to_owned());
        let slice_rows = self.slice_rows().min(sink.capacity());
        let put = put_rows(
            self.engine.clone(),
            plan,
            input.batches,
            sink,
            dataset,
            slice_rows,
        );
        let answer = stream::once(put).map(move |result| result.map_err(|s| call.fail(s)));
        Ok(Response::new(answer.boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let call = self.call("DoExchange");
        let header = header_format(request.metadata()).map_err(|e| call.fail(e.into()))?;
        let input = input::open(request.into_inner())
            .await
            .map_err(|s| call.fail(s))?;
        let plan = self.plan(&input, header).map_err(|e| call.fail(e.into()))?;
        let schema = plan.layout.output_schema();
        let (sender, receiver) = mpsc::channel(ANSWERS_AHEAD);
        let engine = self.engine.clone();
        let slice_rows = self.slice_rows();
        tokio::spawn(async move {
            let outcome = exchange_rows(engine, plan, input.batches, slice_rows, &sender).await;
            if let Err(status) = outcome {
                // A send error means the client is gone and hears nothing.
                let _ = sender.send(Err(status.into())).await;
            }
        });
        let answer =
            encode_answers(schema, ReceiverStream::new(receiver)).map(move |item| match item {
                Ok(data) => {
                    call.sent(&data);
                    Ok(data)
                }
                Err(e) => Err(call.fail(e.into())),
            });
        Ok(Response::new(answer.boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let call = self.call("DoAction");
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            "health" => self.health(),
            "info" => self.info(),
            other => {
                return Err(call.fail(Status::invalid_argument(format!(
                    "unknown action `{other}`; actions: health, info"
                ))))
            }
        };
        let result = arrow_flight::Result {
            body: body.to_string().into_bytes().into(),
        };
        Ok(Response::new(stream::once(ready(Ok(result))).boxed()))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let _call = self.call("ListActions");
        let actions = ACTIONS.map(|(name, description)| {
            Ok(ActionType {
                r#type: name.to_owned(),
                description: description.to_owned(),
            })
        });
        Ok(Response::new(stream::iter(actions).boxed()))
    }
}
