use super::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fletcher-hub-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// Lays out `models--org--name` in `cache_root` the way the Hub tools do.
fn fake_cached_model(cache_root: &Path, id: &str, revision: &str, files: &[&str]) -> PathBuf {
    let repo_dir = cache_root.join(format!("models--{}", id.replace('/', "--")));
    write(&repo_dir.join("refs").join(revision), COMMIT);
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    for file in files {
        write(&snapshot.join(file), &format!("contents of {file}"));
    }
    snapshot
}

#[test]
fn resolves_from_a_fake_cache_offline() {
    let dir = TempDir::new();
    let snapshot = fake_cached_model(
        &dir.0,
        "acme/tiny-embed",
        "main",
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
    let resolved = resolve_model_in("acme/tiny-embed", &dir.0, true).unwrap();
    assert_eq!(resolved, snapshot);
    assert!(resolved.ends_with(format!("models--acme--tiny-embed/snapshots/{COMMIT}")));
    assert_eq!(
        resolve_model_in("acme/tiny-embed@main", &dir.0, true).unwrap(),
        snapshot
    );
    assert_eq!(
        resolve_model_in(&format!("acme/tiny-embed@{COMMIT}"), &dir.0, true).unwrap(),
        snapshot,
        "a commit revision finds its snapshot without a ref"
    );
}

#[test]
fn offline_revision_and_single_name_ids() {
    let dir = TempDir::new();
    let files = ["config.json", "tokenizer.json", "model.safetensors"];
    let snapshot = fake_cached_model(&dir.0, "gpt2", "v1.0", &files);
    assert!(snapshot.starts_with(dir.0.join("models--gpt2")));
    assert_eq!(
        resolve_model_in("gpt2@v1.0", &dir.0, true).unwrap(),
        snapshot
    );
    let err = resolve_model_in("gpt2", &dir.0, true).unwrap_err();
    assert!(
        matches!(&err, HubError::NotCached { revision, .. } if revision == "main"),
        "{err:?}"
    );
}

#[test]
fn missing_id_names_the_id_and_the_cache() {
    let dir = TempDir::new();
    let err = resolve_model_in("acme/absent-model", &dir.0, true).unwrap_err();
    assert!(
        matches!(&err, HubError::NotCached { repo_id, cache, .. }
            if repo_id == "acme/absent-model" && cache == &dir.0),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("acme/absent-model@main"), "{message}");
    assert!(message.contains(&dir.0.display().to_string()), "{message}");
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
}

#[test]
fn cached_snapshot_without_weights_names_the_file() {
    let dir = TempDir::new();
    fake_cached_model(
        &dir.0,
        "acme/partial",
        "main",
        &["config.json", "tokenizer.json"],
    );
    let err = resolve_model_in("acme/partial", &dir.0, true).unwrap_err();
    assert!(
        matches!(&err, HubError::MissingCachedFile { file, .. } if file == "model.safetensors"),
        "{err:?}"
    );
}

#[test]
fn existing_directory_is_returned_as_is() {
    let dir = TempDir::new();
    let model_dir = dir.0.join("my-model");
    fs::create_dir_all(&model_dir).unwrap();
    let spec = model_dir.to_str().unwrap();
    let empty_cache = dir.0.join("cache");
    assert_eq!(
        resolve_model_in(spec, &empty_cache, true).unwrap(),
        model_dir
    );
    assert_eq!(
        resolve_model_in(spec, &empty_cache, false).unwrap(),
        model_dir,
        "a directory never touches the network"
    );
    assert!(!empty_cache.exists());
}

#[test]
fn malformed_specs_are_rejected_before_any_lookup() {
    let dir = TempDir::new();
    let file = dir.0.join("weights.bin");
    fs::write(&file, b"x").unwrap();
    for spec in [
        file.to_str().unwrap(),
        "./no/such/dir",
        "a/b/c",
        "",
        "org/",
        "org/na me",
        "-org/name",
        "org/name@",
        "org/name@../x",
        "org/na--me",
    ] {
        let err = resolve_model_in(spec, &dir.0, true).unwrap_err();
        assert!(
            matches!(&err, HubError::InvalidSpec { spec: s, .. } if s == spec),
            "{spec:?}: {err:?}"
        );
    }
}

#[test]
fn parses_ids_and_revisions() {
    assert_eq!(
        RepoSpec::parse("sentence-transformers/all-MiniLM-L6-v2").unwrap(),
        RepoSpec {
            id: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        RepoSpec::parse("BAAI/bge-small-en-v1.5@refs/pr/3").unwrap(),
        RepoSpec {
            id: "BAAI/bge-small-en-v1.5".into(),
            revision: "refs/pr/3".into()
        }
    );
}

#[test]
fn truthy_offline_values() {
    for value in ["1", "true", "TRUE", "yes", "On"] {
        assert!(is_truthy(value), "{value}");
    }
    for value in ["0", "false", "no", "off", ""] {
        assert!(!is_truthy(value), "{value}");
    }
}

#[test]
fn pooling_configs_follow_modules_json() {
    let dir = TempDir::new();
    let modules = dir.0.join("modules.json");
    write(
        &modules,
        r#"[
          {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
          {"idx": 3, "name": "3", "path": "../escape", "type": "sentence_transformers.models.Pooling"}
        ]"#,
    );
    assert_eq!(
        pooling_configs(&modules).unwrap(),
        vec!["1_Pooling/config.json"]
    );
    assert!(pooling_configs(&dir.0.join("absent.json"))
        .unwrap()
        .is_empty());
    write(&modules, "{\"not\": \"a list\"}");
    assert!(matches!(
        pooling_configs(&modules).unwrap_err(),
        HubError::ModulesJson { .. }
    ));
}

/// An address where nothing listens: connections are refused at once.
fn closed_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn online(cache_root: &Path, endpoint: String) -> HubSettings {
    HubSettings {
        cache_root: cache_root.to_path_buf(),
        offline: false,
        endpoint: Some(endpoint),
        token: Some("test-token".into()),
    }
}

#[test]
fn unreachable_hub_falls_back_to_the_cache() {
    let dir = TempDir::new();
    let snapshot = fake_cached_model(
        &dir.0,
        "acme/cached",
        "main",
        &["config.json", "tokenizer.json"],
    );
    let settings = online(&dir.0, closed_endpoint());
    let err = resolve_with("acme/cached", &settings).unwrap_err();
    match &err {
        HubError::Download {
            file,
            cache,
            repo_id,
            ..
        } => {
            assert_eq!(file, "model.safetensors");
            assert_eq!(cache, &dir.0);
            assert_eq!(repo_id, "acme/cached");
        }
        other => panic!("unexpected {other:?}"),
    }
    write(&snapshot.join("model.safetensors"), "weights");
    assert_eq!(resolve_with("acme/cached", &settings).unwrap(), snapshot);
    assert_eq!(
        resolve_with(&format!("acme/cached@{COMMIT}"), &settings).unwrap(),
        snapshot,
        "a commit without a ref is fetched, fails, and is found in the cache"
    );
    let err = resolve_with("acme/elsewhere", &settings).unwrap_err();
    assert!(matches!(err, HubError::Download { .. }), "{err:?}");
}

/// A minimal stand-in for the Hub's `resolve` endpoint, one request per connection.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>) -> FakeHub {
        FakeHub::start_failing(files, None)
    }

    /// With `fail_with`, every request is answered with that status line.
    fn start_failing(files: HashMap<String, Vec<u8>>, fail_with: Option<&'static str>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve_one(stream, &files, &requests, fail_with);
                    }
                }
            })
        };
        FakeHub {
            endpoint,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    requests: &Mutex<Vec<String>>,
    fail_with: Option<&'static str>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || request_line.is_empty() {
        return;
    }
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    requests.lock().unwrap().push(target.clone());
    let found = if fail_with.is_some() {
        None
    } else {
        files.get(&target)
    };
    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = match found {
        None if fail_with.is_some() => (
            fail_with.unwrap_or_default(),
            vec![],
            b"unavailable".to_vec(),
        ),
        None => ("404 Not Found", vec![], b"Entry not found".to_vec()),
        Some(content) => {
            let (start, end) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .map(|(s, e)| {
                    let start: usize = s.parse().unwrap_or(0);
                    let end = e
                        .parse::<usize>()
                        .map_or(content.len() - 1, |e| e.min(content.len() - 1));
                    (start, end)
                })
                .unwrap_or((0, content.len() - 1));
            let etag: u64 = content.iter().fold(1469598103934665603, |h, &b| {
                (h ^ b as u64).wrapping_mul(1099511628211)
            });
            (
                "206 Partial Content",
                vec![
                    format!("Content-Range: bytes {start}-{end}/{}", content.len()),
                    format!("ETag: \"{etag:016x}\""),
                    format!("X-Repo-Commit: {COMMIT}"),
                ],
                content[start..=end].to_vec(),
            )
        }
    };
    let mut response = format!("HTTP/1.1 {status}\r\n");
    for header in headers {
        response.push_str(&header);
        response.push_str("\r\n");
    }
    response.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

#[test]
fn downloads_into_the_standard_cache_layout() {
    let dir = TempDir::new();
    let prefix = "/acme/st-model/resolve/main";
    let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    let files: HashMap<String, Vec<u8>> = [
        ("config.json", "{\"hidden_size\": 4}"),
        ("tokenizer.json", "{\"tokenizer\": true}"),
        ("model.safetensors", "not really weights"),
        ("modules.json", modules),
        (
            "1_Pooling/config.json",
            "{\"pooling_mode_mean_tokens\": true}",
        ),
    ]
    .into_iter()
    .map(|(name, body)| (format!("{prefix}/{name}"), body.as_bytes().to_vec()))
    .collect();
    let hub = FakeHub::start(files);
    let settings = online(&dir.0, hub.endpoint.clone());

    let snapshot = resolve_with("acme/st-model", &settings).unwrap();
    let repo_dir = dir.0.join("models--acme--st-model");
    assert_eq!(snapshot, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    assert_eq!(
        fs::read_to_string(snapshot.join("model.safetensors")).unwrap(),
        "not really weights"
    );
    assert_eq!(
        fs::read_to_string(snapshot.join("1_Pooling/config.json")).unwrap(),
        "{\"pooling_mode_mean_tokens\": true}"
    );
    assert!(fs::symlink_metadata(snapshot.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    for absent in [
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ] {
        assert!(!snapshot.join(absent).exists());
        assert!(
            repo_dir
                .join(".no_exist")
                .join(COMMIT)
                .join(absent)
                .is_file(),
            "absence of {absent} is recorded"
        );
    }

    let asked = hub.request_count();
    assert_eq!(resolve_with("acme/st-model", &settings).unwrap(), snapshot);
    assert_eq!(
        hub.request_count(),
        asked,
        "a complete cache asks the Hub nothing"
    );
    assert_eq!(
        resolve_model_in("acme/st-model", &dir.0, true).unwrap(),
        snapshot
    );
}

#[test]
fn unknown_repository_is_not_found_with_the_status() {
    let dir = TempDir::new();
    let hub = FakeHub::start(HashMap::new());
    let err = resolve_with("acme/nope", &online(&dir.0, hub.endpoint.clone())).unwrap_err();
    assert!(
        matches!(&err, HubError::NotFound { status: 404, file, repo_id, .. }
            if file == "config.json" && repo_id == "acme/nope"),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

#[test]
fn server_errors_fall_back_to_the_cache() {
    let dir = TempDir::new();
    let hub = FakeHub::start_failing(HashMap::new(), Some("503 Service Unavailable"));
    let settings = online(&dir.0, hub.endpoint.clone());
    let err = resolve_with("acme/flaky", &settings).unwrap_err();
    assert!(
        matches!(&err, HubError::Download { file, .. } if file == "config.json"),
        "{err:?}"
    );
    let snapshot = fake_cached_model(
        &dir.0,
        "acme/flaky",
        "main",
        &["config.json", "tokenizer.json", "model.safetensors"],
    );
    assert_eq!(resolve_with("acme/flaky", &settings).unwrap(), snapshot);
    assert!(hub.request_count() > 0, "the Hub was asked first");
}
