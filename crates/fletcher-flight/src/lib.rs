//! Fletcher's Arrow Flight side: a Flight service for bulk embedding and a
//! client that streams embedded rows on to a Flight sink such as a vector
//! database.
//!
//! The service ([`serve_flight`]) answers:
//!
//! - `DoExchange`: the client streams record batches with a `text` column
//!   (Utf8, LargeUtf8 or Utf8View, no nulls); the service streams back the
//!   same rows in the same order, every other column carried through
//!   unchanged, with an `embedding` column of fixed-size lists added. The
//!   lists hold Float32, or Float16 when the descriptor's `cmd` is the JSON
//!   `{"format":"f16"}` or the call carries the header
//!   `x-fletcher-format: f16`. The `cmd` JSON may also hold `normalize`,
//!   `dimensions`, `prompt`, `truncate` and `dataset` (see
//!   [`CallOptions`]).
//! - `DoPut` with the descriptor path `[dataset]`: embeds the rows and hands
//!   them, other columns included, to the sink; the one `PutResult` answers
//!   `{"rows": N}`. A server without a sink answers `FAILED_PRECONDITION`.
//! - `ListActions`, and `DoAction` for `health` and `info`.
//!
//! A full engine answers `RESOURCE_EXHAUSTED`, bad input `INVALID_ARGUMENT`
//! with a message naming the problem.
//!
//! Input batches are embedded in slices of at most [`MAX_SLICE_ROWS`] rows
//! (fewer when the engine admits fewer texts at once), and every slice comes
//! back as its own record batch: a client batch of 5000 rows returns as five
//! batches, smaller batches keep their boundaries.
//!
//! The sink ([`start_sink`]) keeps rows in a bounded buffer and puts them to
//! a Flight server with `DoPut`, the dataset as descriptor path, retrying
//! with exponential backoff behind a circuit breaker. A row leaves the
//! buffer only once the sink acknowledged the call that carried it, so a
//! retry after a lost acknowledgement sends its rows twice: sinks see every
//! acknowledged row at least once, and should treat a repeated row id as
//! the same row.

mod args;
mod columns;
mod error;
mod input;
mod options;
mod serve;
mod service;
mod sink;

pub use args::FlightArgs;
pub use columns::{rows_to_batch, VectorFormat, EMBEDDING_COLUMN, TEXT_COLUMN};
pub use error::{FlightError, InputError};
pub use options::{CallOptions, FORMAT_HEADER};
pub use serve::{serve_flight, serve_flight_on};
pub use service::{FletcherFlight, MAX_SLICE_ROWS};
pub use sink::{
    start_sink, BreakerState, SinkConfig, SinkError, SinkHandle, SinkReport, SinkStatus,
};
