//! The HTTP application in process, over the real all-MiniLM-L6-v2: shapes,
//! values and the mapping of every error class.

mod arrow;
mod common;
mod embed;
mod errors;
mod openai;
mod routes;
