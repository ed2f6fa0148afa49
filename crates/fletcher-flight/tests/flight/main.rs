//! The Flight service and the sink client, in process over loopback ports.

mod common;
mod exchange;
mod sink;
