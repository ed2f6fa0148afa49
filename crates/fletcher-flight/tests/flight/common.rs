//! Engines, servers and clients shared by the Flight tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Float32Type;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::utils::batches_to_flight_data;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightClient, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use fletcher_engine::{Embedder, Engine, EngineConfig, LoadOptions, Metrics};
use fletcher_flight::{serve_flight_on, SinkHandle};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

/// all-MiniLM-L6-v2: `FLETCHER_TEST_MODEL`, else `models/` at the
/// repository root, else the shared copy.
pub fn minilm_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLETCHER_TEST_MODEL") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for candidate in [
        root.join("models/all-MiniLM-L6-v2"),
        PathBuf::from("/work/shared/models/all-MiniLM-L6-v2"),
    ] {
        if candidate.join("model.safetensors").is_file() {
            return candidate;
        }
    }
    panic!("all-MiniLM-L6-v2 not found");
}

/// A new engine admitting `max_concurrent_inputs` texts at once.
pub fn new_engine(max_concurrent_inputs: usize) -> Engine {
    let load = LoadOptions {
        threads: Some(2),
        ..LoadOptions::default()
    };
    let embedder = Embedder::load(minilm_dir().to_str().unwrap(), &load).unwrap();
    let config = EngineConfig {
        max_concurrent_inputs,
        ..EngineConfig::default()
    };
    Engine::start(embedder, config, Arc::new(Metrics::new())).unwrap()
}

/// The engine most tests share, with the default admission limit.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| new_engine(4096)).clone()
}

/// A Flight service on a loopback port; stops when dropped.
pub struct Served {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Serves Fletcher's Flight service for `engine` on a free loopback port.
pub async fn serve(engine: Engine, sink: Option<SinkHandle>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_flight_on(engine, sink, listener, async {
        let _ = stopped.await;
    }));
    Served { addr, _stop: stop }
}

/// A Flight client connected to `addr`.
pub async fn client(addr: SocketAddr) -> FlightClient {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
}

/// The texts of tests/data/minilm_reference.jsonl with their vectors.
pub fn reference() -> Vec<(String, Vec<f32>)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/minilm_reference.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_owned();
            let vector = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (text, vector)
        })
        .collect()
}

/// A batch of `id` (Int64, from `first_id`) and `text` (Utf8) columns.
pub fn id_text_batch(first_id: i64, texts: &[&str]) -> RecordBatch {
    let ids = Int64Array::from_iter_values(first_id..first_id + texts.len() as i64);
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(ids) as ArrayRef),
        (
            "text",
            Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap()
}

/// The FlightData of `batches`: the schema of the first batch, then one
/// message a batch, empty batches included, the first message carrying
/// `descriptor`. Unlike `FlightDataEncoder`, which drops empty batches and
/// refuses a batch of another schema, this sends the batches as given.
pub fn flight_data(
    descriptor: Option<FlightDescriptor>,
    batches: Vec<RecordBatch>,
) -> impl futures::Stream<Item = arrow_flight::error::Result<FlightData>> + Send + 'static {
    let schema = batches.first().expect("at least one batch").schema();
    let mut messages = batches_to_flight_data(&schema, &batches).unwrap();
    messages[0].flight_descriptor = descriptor;
    futures::stream::iter(messages.into_iter().map(Ok))
}

/// The `id` column of `batch`.
pub fn ids(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec()
}

/// The rows of the Float32 `embedding` column of `batch`.
pub fn vectors(batch: &RecordBatch) -> Vec<Vec<f32>> {
    let list = batch
        .column_by_name("embedding")
        .unwrap()
        .as_fixed_size_list();
    let dim = list.value_length() as usize;
    let values = list.values().as_primitive::<Float32Type>().values();
    values.chunks(dim).map(<[f32]>::to_vec).collect()
}

/// Largest absolute difference between two vectors of equal length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One `DoPut` a [`RecordingSink`] answered.
#[derive(Debug, Clone)]
pub struct Put {
    pub path: Vec<String>,
    pub batches: Vec<RecordBatch>,
}

/// A Flight server that records every `DoPut`, or refuses them with
/// UNAVAILABLE while `failing` is set.
#[derive(Debug, Clone, Default)]
pub struct RecordingSink {
    pub puts: Arc<Mutex<Vec<Put>>>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingSink {
    /// Every row's `id`, over all puts, in arrival order; rows of batches
    /// without an `id` column are left out.
    pub fn ids(&self) -> Vec<i64> {
        let puts = self.puts.lock().unwrap();
        puts.iter()
            .flat_map(|p| p.batches.iter())
            .filter(|b| b.column_by_name("id").is_some())
            .flat_map(ids)
            .collect()
    }

    /// Serves the sink on `listener`; stops when the sender is dropped.
    pub fn serve(&self, listener: TcpListener) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = FlightServiceServer::new(self.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        stop
    }
}

type Boxed<T> = BoxStream<'static, Result<T, Status>>;

fn no(method: &str) -> Status {
    Status::unimplemented(method.to_owned())
}

#[tonic::async_trait]
impl FlightService for RecordingSink {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(no("handshake"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(no("list_flights"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(no("get_flight_info"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(no("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(no("get_schema"))
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(no("do_get"))
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(no("do_exchange"))
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(no("do_action"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(no("list_actions"))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("the sink is failing on purpose"));
        }
        let data: Vec<FlightData> = request.into_inner().try_collect().await?;
        let path = data
            .first()
            .and_then(|d| d.flight_descriptor.as_ref())
            .map(|d| d.path.clone())
            .unwrap_or_default();
        let decoded: Vec<_> =
            FlightDataDecoder::new(futures::stream::iter(data.into_iter().map(Ok)))
                .try_collect()
                .await
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let batches = decoded
            .into_iter()
            .filter_map(|d| match d.payload {
                DecodedPayload::RecordBatch(b) => Some(b),
                _ => None,
            })
            .collect();
        self.puts.lock().unwrap().push(Put { path, batches });
        let answer = PutResult {
            app_metadata: Default::default(),
        };
        Ok(Response::new(futures::stream::iter([Ok(answer)]).boxed()))
    }
}
