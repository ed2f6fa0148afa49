//! End-to-end checks of the `fletcher` binary: exit codes, error messages, and (when
//! the reference model is present) the vectors it writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const MODEL_DIR: &str = "/work/shared/models/all-MiniLM-L6-v2";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fletcher-cli-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fletcher(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fletcher"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("FLETCHER_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn usage_errors_exit_with_2() {
    let output = fletcher(&["embed", "--model", "m", "--input", "x.txt"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--output"));
    let output = fletcher(&["bench", "--model", "m", "--input", "x", "--repeat", "0"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn unsupported_output_fails_before_reading_anything() {
    let output = fletcher(&[
        "embed",
        "--model",
        "no/such-model",
        "--input",
        "/no/such/input.txt",
        "--output",
        "out.csv",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: out.csv: unsupported output format"),
        "{message}"
    );
    assert!(message.contains(".npy"), "{message}");
}

#[test]
fn bad_input_reports_file_and_line() {
    let dir = TempDir::new();
    let input = dir.path("in.jsonl");
    fs::write(&input, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let output = fletcher(&[
        "embed",
        "--model",
        "no/such-model",
        "--input",
        s(&input),
        "--output",
        s(&dir.path("out.npy")),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("in.jsonl:2: the JSON object has no \"text\" field"),
        "{message}"
    );
}

#[test]
fn missing_model_names_the_id_and_the_cache() {
    let dir = TempDir::new();
    let input = dir.path("in.txt");
    fs::write(&input, "hello\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fletcher"))
        .args([
            "embed",
            "--model",
            "acme/absent",
            "--input",
            s(&input),
            "--output",
        ])
        .arg(dir.path("out.npy"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path("hf"))
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("acme/absent"), "{message}");
    assert!(
        message.contains(s(&dir.path("hf").join("hub"))),
        "{message}"
    );
}

fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape = &shape[..shape.find(')').unwrap()];
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (dims[0], dims[1], data)
}

#[test]
fn embeds_with_the_reference_model() {
    if !Path::new(MODEL_DIR).is_dir() {
        eprintln!("skipped: {MODEL_DIR} is absent");
        return;
    }
    let dir = TempDir::new();
    let input = dir.path("in.txt");
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "",
        "Embeddings map text to vectors.",
        "The quick brown fox jumps over the lazy dog.",
        "Un texte en français.",
    ];
    fs::write(&input, texts.join("\n")).unwrap();
    let npy = dir.path("out.npy");
    let output = fletcher(&[
        "embed",
        "--model",
        MODEL_DIR,
        "--input",
        s(&input),
        "--output",
        s(&npy),
        "--threads",
        "2",
        "--batch-texts",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = stderr(&output);
    assert!(summary.starts_with("embedded 5 texts in "), "{summary}");
    assert_eq!(summary.lines().count(), 1, "{summary}");

    let (rows, dim, data) = read_npy(&npy);
    assert_eq!((rows, dim), (5, 384));
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    for i in 0..rows {
        let norm: f32 = row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} norm {norm}");
    }
    assert_eq!(row(0), row(3), "same text, same vector, whatever the batch");
    assert_ne!(row(0), row(2));

    let jsonl = dir.path("out.jsonl");
    let output = fletcher(&[
        "embed",
        "--model",
        MODEL_DIR,
        "--input",
        s(&input),
        "--output",
        s(&jsonl),
        "--threads",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<String> = fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let vector: Vec<f32> = value["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.to_string().parse::<f32>().unwrap())
            .collect();
        let diff = vector
            .iter()
            .zip(row(i))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "row {i}: jsonl and npy differ by {diff}");
    }
}
