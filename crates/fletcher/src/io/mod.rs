//! File input and output for the command-line tool: reading the texts to embed and
//! streaming the resulting vectors to disk. Formats are chosen by file extension.

pub mod input;
pub mod output;
#[cfg(test)]
mod tests;

pub use input::read_texts;
pub use output::{check_output_path, create_sink};
