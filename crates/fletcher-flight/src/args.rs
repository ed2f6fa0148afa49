//! The Flight options of `fletcher serve`.

use std::net::{IpAddr, SocketAddr};

use crate::sink::SinkConfig;

/// Options of the Flight service and the sink, flattened into
/// `fletcher serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct FlightArgs {
    /// Port of the Arrow Flight service (DoExchange, DoPut, DoAction); no
    /// Flight service when absent.
    #[arg(long, env = "FLETCHER_FLIGHT_PORT")]
    pub flight_port: Option<u16>,

    /// Arrow Flight server that embedded rows are put to, as
    /// grpc://HOST:PORT (Flight DoPut and HTTP `?forward=true`).
    #[arg(long, env = "FLETCHER_SINK")]
    pub sink: Option<String>,

    /// Dataset of forwarded rows when a request names none: the descriptor
    /// path of the sink's DoPut calls.
    #[arg(long, default_value = "default")]
    pub dataset: String,

    /// Most rows waiting for the sink; more are refused with 429 or
    /// RESOURCE_EXHAUSTED until the sink catches up.
    #[arg(long, default_value_t = 65_536)]
    pub sink_buffer_rows: usize,
}

impl FlightArgs {
    /// The address of the Flight service on `host`, when a port was given.
    pub fn flight_addr(&self, host: IpAddr) -> Option<SocketAddr> {
        self.flight_port.map(|port| SocketAddr::new(host, port))
    }

    /// The sink's configuration, with the defaults of [`SinkConfig::new`]
    /// for what the options do not set, when a sink was given.
    pub fn sink_config(&self) -> Option<SinkConfig> {
        self.sink.as_ref().map(|url| SinkConfig {
            buffer_rows: self.sink_buffer_rows,
            ..SinkConfig::new(url.clone(), self.dataset.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flight: FlightArgs,
    }

    #[test]
    fn options_build_the_sink_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--flight-port",
            "8815",
            "--sink",
            "grpc://db:3000",
            "--sink-buffer-rows",
            "100",
        ])
        .unwrap();
        let config = cli.flight.sink_config().unwrap();
        assert_eq!(config.url, "grpc://db:3000");
        assert_eq!(config.dataset, "default");
        assert_eq!(config.buffer_rows, 100);
        let addr = cli.flight.flight_addr("127.0.0.1".parse().unwrap());
        assert_eq!(addr, Some("127.0.0.1:8815".parse().unwrap()));
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert!(none.flight.sink_config().is_none());
        assert!(none.flight.flight_addr("::".parse().unwrap()).is_none());
    }
}
