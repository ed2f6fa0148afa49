//! `fletcher serve`: load, bind, serve, drain on a signal.

use std::future::IntoFuture;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;

use fletcher_engine::{Embedder, Engine, EngineError, Metrics};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;

use crate::error::ApiError;
use crate::{router, ServeArgs};

/// How long the runtime waits for stray blocking work once serving stopped.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(10);

/// How long the sink may take to send what it holds once serving stopped.
const SINK_FLUSH: Duration = Duration::from_secs(10);

/// Why `fletcher serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The async runtime could not be built.
    #[error("could not start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The model could not be loaded or the engine not started.
    #[error("could not load model {model}: {source}")]
    Load {
        /// The model argument.
        model: String,
        /// What the engine reported.
        #[source]
        source: Box<EngineError>,
    },
    /// The loading task panicked or was cancelled.
    #[error("model loading stopped: {0}")]
    LoadTask(String),
    /// The address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// `host:port` as given.
        address: String,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The Flight sink could not start.
    #[error("could not start the sink: {0}")]
    Sink(String),
    /// Accepting connections failed.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs `fletcher serve` until SIGTERM or SIGINT.
///
/// Installs a tracing subscriber (text, or JSON with `--json-logs`,
/// filtered by `RUST_LOG`, default `info`) unless the process already has
/// one, builds its own tokio runtime, binds `--host:--port`, and loads the
/// model on a blocking thread; until the model is loaded and warmed up every
/// route answers 503 (so `/health` reads as not ready). On SIGTERM or SIGINT it stops accepting connections,
/// lets requests in flight finish, closes the engine and returns `Ok`. A
/// signal that arrives while the model is still loading ends the process
/// the default way.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    init_logging(args.json_logs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fletcher-http")
        .build()
        .map_err(ServeError::Runtime)?;
    let outcome = runtime.block_on(serve(args));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    outcome
}

async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let address = format!("{}:{}", args.host, args.port);
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|source| ServeError::Bind {
            address: address.clone(),
            source,
        })?;
    let local = listener.local_addr().map_or(address, |a| a.to_string());
    tracing::info!(address = %local, "listening; 503 until the model is loaded");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let wait_for_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let app = Arc::new(OnceLock::new());
    let http = tokio::spawn(
        axum::serve(listener, gate(app.clone()))
            .with_graceful_shutdown(wait_for_stop(stopping.clone()))
            .into_future(),
    );

    let model = args.model.clone();
    let load = args.load_options();
    let config = args.engine_config();
    tracing::info!(%model, "loading model");
    let engine = tokio::task::spawn_blocking(move || {
        let embedder = Embedder::load(&model, &load)?;
        Engine::start(embedder, config, Arc::new(Metrics::new()))
    })
    .await
    .map_err(|e| ServeError::LoadTask(e.to_string()))?
    .map_err(|source| ServeError::Load {
        model: args.model.clone(),
        source: Box::new(source),
    })?;
    let embedder = engine.embedder();
    tracing::info!(
        model = embedder.model_id(),
        dimension = embedder.dimension(),
        max_seq_length = embedder.max_seq_length(),
        threads = embedder.threads(),
        "model loaded"
    );

    let sink = match args.flight.sink_config() {
        Some(config) => Some(
            fletcher_flight::start_sink(config, engine.metrics())
                .map_err(|e| ServeError::Sink(e.to_string()))?,
        ),
        None => None,
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let flight = match args.flight.flight_port {
        Some(port) => {
            let listener = TcpListener::bind((args.host.as_str(), port))
                .await
                .map_err(|source| ServeError::Bind {
                    address: format!("{}:{port}", args.host),
                    source,
                })?;
            let (engine, sink, stopped) = (
                engine.clone(),
                sink.clone(),
                wait_for_stop(stopping.clone()),
            );
            Some(tokio::spawn(async move {
                if let Err(error) =
                    fletcher_flight::serve_flight_on(engine, sink, listener, stopped).await
                {
                    tracing::error!(%error, "the Flight service failed");
                }
            }))
        }
        None => None,
    };

    let settings = crate::Settings {
        sink: sink.clone(),
        ..args.settings()
    };
    let _ = app.set(router(engine.clone(), settings));
    let served = match http.await {
        Ok(served) => served.map_err(ServeError::Serve),
        Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
    };
    if let Some(flight) = flight {
        let _ = flight.await;
    }
    engine.close();
    if let Some(sink) = sink {
        let report = sink.shutdown(SINK_FLUSH).await;
        if report.unsent > 0 {
            tracing::error!(
                sent = report.sent,
                unsent = report.unsent,
                "the sink did not take every buffered row before shutdown"
            );
        } else {
            tracing::info!(sent = report.sent, "sink flushed");
        }
    }
    tracing::info!("stopped");
    served
}

/// The service that listens from the start: every route answers 503 with
/// a JSON body until `app` is set, then `app` answers.
fn gate(app: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |request: Request| {
        let app = app.clone();
        async move {
            match app.get() {
                Some(router) => router.clone().oneshot(request).await.into_response(),
                None => ApiError::Unhealthy.into_response(),
            }
        }
    })
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "shutting down: finishing requests in flight"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutting down: finishing requests in flight"),
    }
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A subscriber the binary installed first is kept.
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
