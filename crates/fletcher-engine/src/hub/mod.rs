//! Turning a model argument into a local model directory.
//!
//! A model is named either by a directory on disk or by a Hugging Face Hub repository
//! id (`name` or `org/name`, optionally `@revision`). Hub models are fetched into, or
//! found in, the standard Hub cache (`models--org--name/{blobs,refs,snapshots}`), so a
//! cache filled by other Hugging Face tools is reused and the other way round.
//!
//! The cache directory is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`. `HF_HUB_OFFLINE=1` resolves from the cache only.
//! `HF_ENDPOINT` replaces `https://huggingface.co`; `HF_TOKEN`, else the token file
//! next to the cache directory, authenticates.
//!
//! A revision already in the cache is used without asking the Hub for a newer commit.
//! The Hub client has no connect timeout of its own, so on a network that drops
//! packets rather than refusing connections a first fetch waits for the operating
//! system's TCP timeout; `HF_HUB_OFFLINE=1` avoids it.

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

/// Files a model cannot be loaded without.
pub const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];

/// Files fetched when the repository has them; their absence is not an error.
/// The pooling configuration (`<folder>/config.json` for each Pooling module listed in
/// `modules.json`) is fetched the same way.
pub const OPTIONAL_FILES: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

const DEFAULT_REVISION: &str = "main";
const MAX_REPO_NAME_LEN: usize = 96;

/// Why a model argument could not be turned into a local directory.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The argument is neither an existing directory nor a well-formed Hub id.
    #[error("model {spec:?} is not an existing directory, nor a Hugging Face Hub id: {reason}")]
    InvalidSpec { spec: String, reason: String },
    /// The model is not in the cache, and the Hub was not asked (offline mode).
    #[error(
        "model {repo_id}@{revision} is not in the Hugging Face cache at {} and HF_HUB_OFFLINE \
         forbids downloading it (nor is {repo_id:?} a local directory)",
        cache.display()
    )]
    NotCached {
        repo_id: String,
        revision: String,
        cache: PathBuf,
    },
    /// The cached snapshot lacks a file the model needs.
    #[error(
        "model {repo_id}@{revision}: the cached snapshot {} has no {file}",
        snapshot.display()
    )]
    MissingCachedFile {
        repo_id: String,
        revision: String,
        file: String,
        snapshot: PathBuf,
    },
    /// The Hub answered a required file with a client error (4xx other than 429).
    #[error(
        "model {repo_id}@{revision}: the Hub answered HTTP {status} for {file}; the repository, \
         revision or file does not exist, or it is private or gated and needs HF_TOKEN \
         (nor is {repo_id:?} a local directory)"
    )]
    NotFound {
        repo_id: String,
        revision: String,
        file: String,
        status: u16,
    },
    /// Fetching a file failed, and the cache could not stand in for the Hub.
    #[error(
        "model {repo_id}@{revision}: cannot fetch {file} from the Hub, and the cache at {} \
         does not hold the model",
        cache.display()
    )]
    Download {
        repo_id: String,
        revision: String,
        file: String,
        cache: PathBuf,
        source: ApiError,
    },
    /// The Hub client could not be set up.
    #[error("cannot set up the Hugging Face Hub client")]
    Client { source: ApiError },
    /// A cached file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `modules.json` is not the list of modules sentence-transformers writes.
    #[error("{} is not a valid sentence-transformers modules.json", path.display())]
    ModulesJson {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Resolves `spec` to a local model directory.
///
/// An existing directory is returned unchanged. Anything else is read as a Hub id
/// (`name`, `org/name`, either with an optional `@revision`, default `main`) and
/// resolved through [`resolve_model_in`] with the cache directory and offline mode
/// taken from the environment (see the module documentation).
pub fn resolve_model(spec: &str) -> Result<PathBuf, HubError> {
    resolve_model_in(spec, &cache_root_from_env(), offline_from_env())
}

/// Resolves `spec` against the Hub cache directory `cache_root` (the directory that
/// holds `models--org--name`, i.e. `$HF_HOME/hub`).
///
/// An existing directory is returned unchanged. Otherwise the snapshot directory of
/// the Hub model is returned: `cache_root/models--org--name/snapshots/<commit>`, which
/// holds [`REQUIRED_FILES`] and whichever optional files the repository has.
///
/// With `offline`, or when the Hub cannot be reached, only the cache is consulted:
/// `refs/<revision>` names the commit, or the revision is itself a commit with a
/// snapshot. Otherwise missing files are downloaded, and optional files the Hub does
/// not have are remembered as absent (`.no_exist/<commit>/<file>`, as other Hugging
/// Face tools do) so later calls skip asking.
pub fn resolve_model_in(spec: &str, cache_root: &Path, offline: bool) -> Result<PathBuf, HubError> {
    let settings = HubSettings {
        cache_root: cache_root.to_path_buf(),
        offline,
        endpoint: non_empty_env("HF_ENDPOINT"),
        token: non_empty_env("HF_TOKEN").or_else(|| non_empty_env("HUGGING_FACE_HUB_TOKEN")),
    };
    resolve_with(spec, &settings)
}

/// Everything resolution depends on besides the spec.
#[derive(Debug, Clone)]
struct HubSettings {
    cache_root: PathBuf,
    offline: bool,
    /// `None` keeps the client's default, `https://huggingface.co`.
    endpoint: Option<String>,
    /// `None` lets the client read the token file next to the cache.
    token: Option<String>,
}

fn resolve_with(spec: &str, settings: &HubSettings) -> Result<PathBuf, HubError> {
    let as_path = Path::new(spec);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if as_path.exists() {
        return Err(HubError::InvalidSpec {
            spec: spec.to_owned(),
            reason: "it is a file; a model is a directory".to_owned(),
        });
    }
    let repo = RepoSpec::parse(spec)?;
    if settings.offline {
        resolve_cached(&repo, &settings.cache_root)
    } else {
        resolve_online(&repo, settings)
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn cache_root_from_env() -> PathBuf {
    if let Some(hub_cache) = non_empty_env("HF_HUB_CACHE") {
        return PathBuf::from(hub_cache);
    }
    if let Some(home) = non_empty_env("HF_HOME") {
        return Path::new(&home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

fn offline_from_env() -> bool {
    non_empty_env("HF_HUB_OFFLINE").is_some_and(|value| is_truthy(&value))
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// A Hub model id with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepoSpec {
    id: String,
    revision: String,
}

impl RepoSpec {
    fn parse(spec: &str) -> Result<RepoSpec, HubError> {
        let invalid = |reason: String| HubError::InvalidSpec {
            spec: spec.to_owned(),
            reason,
        };
        let (id, revision) = match spec.split_once('@') {
            Some((id, revision)) => (id, revision),
            None => (spec, DEFAULT_REVISION),
        };
        if id.is_empty() {
            return Err(invalid("the id is empty".to_owned()));
        }
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() > 2 {
            return Err(invalid(
                "no such directory, and a Hub id has at most one '/' (org/name)".to_owned(),
            ));
        }
        for part in &parts {
            check_repo_name_part(part).map_err(&invalid)?;
        }
        if revision.is_empty()
            || revision.chars().any(|c| c.is_whitespace() || c == '\\')
            || revision
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(invalid(format!("{revision:?} is not a valid revision")));
        }
        Ok(RepoSpec {
            id: id.to_owned(),
            revision: revision.to_owned(),
        })
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }

    /// `cache_root/models--org--name`.
    fn cache_dir(&self, cache_root: &Path) -> PathBuf {
        cache_root.join(self.repo().folder_name())
    }
}

fn check_repo_name_part(part: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err("no such directory, and a Hub id has no empty parts".to_owned());
    }
    if part.len() > MAX_REPO_NAME_LEN {
        return Err(format!(
            "no such directory, and a Hub id part is at most {MAX_REPO_NAME_LEN} characters"
        ));
    }
    if let Some(c) = part
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "no such directory, and {c:?} cannot appear in a Hub id (letters, digits, '-', '_', '.')"
        ));
    }
    if part.starts_with(['-', '.'])
        || part.ends_with(['-', '.'])
        || part.contains("--")
        || part.contains("..")
    {
        return Err(
            "no such directory, and a Hub id cannot start or end with '-' or '.', nor contain '--' or '..'"
                .to_owned(),
        );
    }
    Ok(())
}

/// The commit `repo.revision` names in the cache: the content of `refs/<revision>`, or
/// the revision itself when it is a commit with a snapshot.
fn cached_commit(repo: &RepoSpec, cache_root: &Path) -> Result<Option<String>, HubError> {
    let repo_dir = repo.cache_dir(cache_root);
    let ref_path = repo_dir.join("refs").join(&repo.revision);
    match fs::read_to_string(&ref_path) {
        Ok(commit) => {
            let commit = commit.trim();
            if !commit.is_empty() {
                return Ok(Some(commit.to_owned()));
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(HubError::Io {
                path: ref_path,
                source,
            })
        }
    }
    if repo_dir.join("snapshots").join(&repo.revision).is_dir() {
        return Ok(Some(repo.revision.clone()));
    }
    Ok(None)
}

fn resolve_cached(repo: &RepoSpec, cache_root: &Path) -> Result<PathBuf, HubError> {
    let snapshot = cached_commit(repo, cache_root)?
        .map(|commit| repo.cache_dir(cache_root).join("snapshots").join(commit))
        .filter(|snapshot| snapshot.is_dir())
        .ok_or_else(|| HubError::NotCached {
            repo_id: repo.id.clone(),
            revision: repo.revision.clone(),
            cache: cache_root.to_path_buf(),
        })?;
    if let Some(file) = REQUIRED_FILES
        .iter()
        .find(|file| !snapshot.join(file).is_file())
    {
        return Err(HubError::MissingCachedFile {
            repo_id: repo.id.clone(),
            revision: repo.revision.clone(),
            file: (*file).to_owned(),
            snapshot,
        });
    }
    Ok(snapshot)
}

/// The HTTP status of a failed request, `None` when no response came back.
fn http_status(err: &ApiError) -> Option<u16> {
    match err {
        ApiError::RequestError(inner) => inner
            .to_string()
            .strip_prefix("http status: ")
            .and_then(|code| code.trim().parse().ok()),
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

/// Whether the failure says nothing about the file (no answer, a server error, rate
/// limiting), so the cache may stand in for the Hub.
fn may_fall_back_to_cache(err: &ApiError) -> bool {
    match http_status(err) {
        Some(status) => status == 429 || status >= 500,
        None => !matches!(err, ApiError::LockAcquisition(_)),
    }
}

fn resolve_online(repo: &RepoSpec, settings: &HubSettings) -> Result<PathBuf, HubError> {
    let cache_root = &settings.cache_root;
    let mut builder = ApiBuilder::from_cache(Cache::new(cache_root.clone()))
        .with_progress(std::io::stderr().is_terminal());
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
    }
    if let Some(token) = &settings.token {
        builder = builder.with_token(Some(token.clone()));
    }
    let api = builder
        .build()
        .map_err(|source| HubError::Client { source })?;
    let api_repo = api.repo(repo.repo());

    let mut snapshot = None;
    for file in REQUIRED_FILES {
        match api_repo.get(file) {
            Ok(path) => {
                if snapshot.is_none() {
                    snapshot = path.parent().map(Path::to_path_buf);
                }
            }
            Err(err) => {
                if let Some(status) = http_status(&err).filter(|_| !may_fall_back_to_cache(&err)) {
                    return Err(HubError::NotFound {
                        repo_id: repo.id.clone(),
                        revision: repo.revision.clone(),
                        file: (*file).to_owned(),
                        status,
                    });
                }
                if may_fall_back_to_cache(&err) {
                    if let Ok(cached) = resolve_cached(repo, cache_root) {
                        tracing::warn!(
                            model = %repo.id,
                            revision = %repo.revision,
                            error = %err,
                            "cannot reach the Hugging Face Hub; using the cached snapshot {}",
                            cached.display()
                        );
                        return Ok(cached);
                    }
                }
                return Err(HubError::Download {
                    repo_id: repo.id.clone(),
                    revision: repo.revision.clone(),
                    file: (*file).to_owned(),
                    cache: cache_root.clone(),
                    source: err,
                });
            }
        }
    }
    let Some(snapshot) = snapshot else {
        return Err(HubError::NotCached {
            repo_id: repo.id.clone(),
            revision: repo.revision.clone(),
            cache: cache_root.clone(),
        });
    };
    let commit = snapshot
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut fetcher = OptionalFetcher {
        repo,
        api_repo: &api_repo,
        no_exist_dir: repo.cache_dir(cache_root).join(".no_exist").join(&commit),
        snapshot: &snapshot,
        cache_root,
        online: true,
    };
    for file in OPTIONAL_FILES {
        fetcher.fetch(file)?;
    }
    for file in pooling_configs(&snapshot.join("modules.json"))? {
        fetcher.fetch(&file)?;
    }
    Ok(snapshot)
}

/// Fetches optional files, switching to the cache alone after the first network
/// failure.
struct OptionalFetcher<'a> {
    repo: &'a RepoSpec,
    api_repo: &'a ApiRepo,
    no_exist_dir: PathBuf,
    snapshot: &'a Path,
    cache_root: &'a Path,
    online: bool,
}

impl OptionalFetcher<'_> {
    fn fetch(&mut self, file: &str) -> Result<(), HubError> {
        if !self.online || self.snapshot.join(file).is_file() {
            return Ok(());
        }
        let marker = self.no_exist_dir.join(file);
        if marker.exists() {
            return Ok(());
        }
        match self.api_repo.get(file) {
            Ok(_) => Ok(()),
            Err(err) if http_status(&err) == Some(404) => {
                tracing::debug!(model = %self.repo.id, file, "not in the repository");
                let recorded = marker
                    .parent()
                    .map_or(Ok(()), fs::create_dir_all)
                    .and_then(|()| fs::write(&marker, b""));
                if let Err(err) = recorded {
                    tracing::debug!(path = %marker.display(), error = %err, "cannot record absence");
                }
                Ok(())
            }
            Err(err) if may_fall_back_to_cache(&err) => {
                tracing::warn!(
                    model = %self.repo.id,
                    file,
                    error = %err,
                    "cannot reach the Hugging Face Hub; using the files already cached"
                );
                self.online = false;
                Ok(())
            }
            Err(err) => Err(HubError::Download {
                repo_id: self.repo.id.clone(),
                revision: self.repo.revision.clone(),
                file: file.to_owned(),
                cache: self.cache_root.to_path_buf(),
                source: err,
            }),
        }
    }
}

#[derive(serde::Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

/// `<folder>/config.json` for every Pooling module listed in `modules_json`; empty
/// when the file does not exist. Folders that would leave the snapshot are ignored.
fn pooling_configs(modules_json: &Path) -> Result<Vec<String>, HubError> {
    let text = match fs::read_to_string(modules_json) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HubError::Io {
                path: modules_json.to_path_buf(),
                source,
            })
        }
    };
    let modules: Vec<ModuleEntry> =
        serde_json::from_str(&text).map_err(|source| HubError::ModulesJson {
            path: modules_json.to_path_buf(),
            source,
        })?;
    Ok(modules
        .into_iter()
        .filter(|module| module.kind.rsplit('.').next() == Some("Pooling"))
        .map(|module| module.path.trim_matches('/').to_owned())
        .filter(|folder| {
            !folder.is_empty()
                && !folder.contains('\\')
                && folder
                    .split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        })
        .map(|folder| format!("{folder}/config.json"))
        .collect())
}

#[cfg(test)]
mod tests;
