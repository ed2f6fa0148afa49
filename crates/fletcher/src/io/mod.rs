//! File input and output for the command-line tool: reading the texts to embed and
//! streaming the resulting vectors to disk. Formats are chosen by file extension.

mod input;
mod output;
#[cfg(test)]
mod tests;

pub use input::{read_texts, InputError, TEXT_FIELD};
pub use output::{
    check_output_path, create_sink, output_schema, EmbeddingSink, OutputError, EMBEDDING_COLUMN,
    SUPPORTED_OUTPUT_EXTENSIONS, TEXT_COLUMN,
};
