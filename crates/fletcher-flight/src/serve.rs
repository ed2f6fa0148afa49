//! Running the Flight service on a TCP address until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;

use fletcher_engine::Engine;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::error::FlightError;
use crate::service::FletcherFlight;
use crate::sink::SinkHandle;

/// Serves the Flight service for `engine` on `addr` until `shutdown`
/// completes, then lets calls in flight finish and returns. `DoPut` rows go
/// to `sink`; the sink is left running, for the caller to shut down once
/// every front end feeding it has stopped.
pub async fn serve_flight(
    engine: Engine,
    sink: Option<SinkHandle>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FlightError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| FlightError::Bind { addr, source })?;
    serve_flight_on(engine, sink, listener, shutdown).await
}

/// [`serve_flight`] on a listener already bound, for example to port 0.
pub async fn serve_flight_on(
    engine: Engine,
    sink: Option<SinkHandle>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FlightError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, sink = sink.is_some(), "Arrow Flight service listening");
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(FletcherFlight::new(engine, sink).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(FlightError::Serve)
}
