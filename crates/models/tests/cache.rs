//! ModelCache against a real HTTP(S) server (the test-only `fileserver`) serving the real dev
//! model in place: TLS with a private CA, resume, digests, corruption, one download under
//! concurrency (one cache and two caches on one directory), hf: routes with tokens, 404, quota/LRU
//! eviction and the safety of `file:` models.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use api::model_ref::ModelRef;
use fileserver::{FileServer, Options};
use models::{CacheConfig, FetchError, ModelCache, Progress};

const DEV_DIGEST: &str = "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const WRONG_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The dev model (scripts/dev-assets.sh): `$LLORCH_DEV_MODEL` or the default cache path.
fn dev_model() -> PathBuf {
    let path = match std::env::var_os("LLORCH_DEV_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/llama-orch/models/dev/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "dev model {} is missing: run scripts/dev-assets.sh first",
        path.display()
    );
    path
}

fn dev_size() -> u64 {
    std::fs::metadata(dev_model()).expect("dev model").len()
}

fn config(dir: &Path) -> CacheConfig {
    CacheConfig {
        models_dir: dir.to_path_buf(),
        quota_bytes: None,
        hf_endpoint: "https://huggingface.invalid".into(),
        hf_token: None,
        extra_root_pem: None,
    }
}

fn https_ref(server: &FileServer, path: &str) -> ModelRef {
    ModelRef::parse(&format!("{}{path}", server.url())).expect("https ref")
}

fn hf_ref(s: &str) -> ModelRef {
    ModelRef::parse(s).expect("hf ref")
}

fn no_progress(_: Progress) {}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A small valid GGUF (no KVs, no tensors) padded to `size` bytes with `fill`.
fn small_gguf(dir: &Path, name: &str, size: usize, fill: u8) -> PathBuf {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.resize(size, fill);
    let p = dir.join(name);
    std::fs::write(&p, b).expect("write small gguf");
    p
}

#[tokio::test]
async fn https_fetch_with_private_ca_then_cache_hit() {
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/models/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let r = https_ref(&server, "/models/dev.gguf");

    let seen: Mutex<Vec<Progress>> = Mutex::default();
    let record = |p: Progress| seen.lock().expect("progress").push(p);
    let got = cache
        .fetch(&r, Some(DEV_DIGEST), &record)
        .await
        .expect("fetch");
    let size = dev_size();
    assert_eq!(got.digest, DEV_DIGEST);
    assert_eq!(got.size_bytes, size);
    assert_eq!(got.downloaded_bytes, size);
    assert_eq!(got.path, cache.path_for(&r));
    assert!(got.path.starts_with(dir.path().join("https")));
    assert_eq!(got.metadata.architecture.as_deref(), Some("llama"));
    assert_eq!(got.metadata.quantization.as_deref(), Some("Q4_1"));
    assert_eq!(std::fs::read(&got.path).expect("copy").len() as u64, size);

    let seen = seen.into_inner().expect("progress");
    assert!(seen.len() >= 2, "progress reported: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
        "monotonic"
    );
    assert!(seen.iter().all(|p| p.bytes_total == Some(size)));
    assert_eq!(
        seen.last().copied(),
        Some(Progress {
            bytes_done: size,
            bytes_total: Some(size)
        })
    );

    let sidecar = models::layout::sidecar_path(&got.path);
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("sidecar")).expect("json");
    assert_eq!(side["digest"], DEV_DIGEST);
    assert_eq!(side["size_bytes"], size);
    assert_eq!(side["source"], r.to_string());

    // Second fetch: from the cache, no bytes, no GET; also without an expected digest.
    let again = cache
        .fetch(&r, None, &no_progress)
        .await
        .expect("cached fetch");
    assert_eq!(
        (
            again.downloaded_bytes,
            again.digest.as_str(),
            again.size_bytes
        ),
        (0, DEV_DIGEST, size)
    );
    assert_eq!(server.gets("/models/dev.gguf"), 1);
    assert_eq!(cache.cached_entries().len(), 1);
    let names: Vec<String> = files_under(dir.path())
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 2, "the model and its sidecar only: {names:?}");

    // A cached copy whose recorded digest differs from the expected one is a mismatch, not a re-download.
    let err = cache
        .fetch(&r, Some(WRONG_DIGEST), &no_progress)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err:?}");
    assert_eq!(server.gets("/models/dev.gguf"), 1);

    // verify re-hashes; a wrong digest deletes the copy.
    let v = cache
        .verify(&r, &DEV_DIGEST.to_uppercase().replace("SHA256", "sha256"))
        .await
        .expect("verify");
    assert_eq!(v.digest, DEV_DIGEST);
    let err = cache
        .verify(&r, WRONG_DIGEST)
        .await
        .expect_err("verify mismatch");
    assert!(matches!(err, FetchError::DigestMismatch { .. }));
    assert!(
        files_under(dir.path()).is_empty(),
        "copy deleted: {:?}",
        files_under(dir.path())
    );
    assert!(matches!(
        cache.verify(&r, DEV_DIGEST).await,
        Err(FetchError::NotFound(_))
    ));
}

#[tokio::test]
async fn resume_after_interrupted_transfer() {
    let server = FileServer::start_tls(Options::new().interrupt_first_after(10 << 20)).await;
    server.serve("/m/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let seen: Mutex<Vec<Progress>> = Mutex::default();
    let record = |p: Progress| seen.lock().expect("progress").push(p);
    let got = cache
        .fetch(
            &https_ref(&server, "/m/dev.gguf"),
            Some(DEV_DIGEST),
            &record,
        )
        .await
        .expect("fetch with resume");
    let size = dev_size();
    assert_eq!(got.digest, DEV_DIGEST);
    assert_eq!(server.gets("/m/dev.gguf"), 2);
    let sent = server.bytes_sent("/m/dev.gguf");
    assert!(sent >= size && sent * 5 < size * 6, "sent {sent} of {size}");
    assert!(got.downloaded_bytes >= size && got.downloaded_bytes * 5 < size * 6);
    let seen = seen.into_inner().expect("progress");
    assert!(
        seen.windows(2).all(|w| w[0].bytes_done <= w[1].bytes_done),
        "monotonic across the resume"
    );
}

#[tokio::test]
async fn retries_5xx_then_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = small_gguf(dir.path(), "src.gguf", 4096, 7);
    let server = FileServer::start_tls(Options::new().fail_first_gets(2)).await;
    server.serve("/s.gguf", &src);
    let models = dir.path().join("models");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(&models)
    })
    .expect("cache");
    let got = cache
        .fetch(&https_ref(&server, "/s.gguf"), None, &no_progress)
        .await
        .expect("fetch after 503s");
    assert_eq!(got.size_bytes, 4096);
    assert_eq!(server.gets("/s.gguf"), 1);
}

#[tokio::test]
async fn wrong_expected_digest_leaves_nothing() {
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let err = cache
        .fetch(
            &https_ref(&server, "/dev.gguf"),
            Some(WRONG_DIGEST),
            &no_progress,
        )
        .await
        .expect_err("mismatch");
    match &err {
        FetchError::DigestMismatch { expected, actual } => assert_eq!(
            (expected.as_str(), actual.as_str()),
            (WRONG_DIGEST, DEV_DIGEST)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.envelope().code, api::ErrorCode::UntrustedArtifact);
    assert!(
        files_under(dir.path()).is_empty(),
        "no file, no .part: {:?}",
        files_under(dir.path())
    );
    assert!(cache.cached_entries().is_empty());
}

#[tokio::test]
async fn corrupt_server_is_a_mismatch() {
    let server = FileServer::start_tls(Options::new().corrupt()).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let err = cache
        .fetch(
            &https_ref(&server, "/dev.gguf"),
            Some(DEV_DIGEST),
            &no_progress,
        )
        .await
        .expect_err("corrupt");
    assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err:?}");
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );
}

#[tokio::test]
async fn concurrent_fetches_on_one_cache_download_once() {
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let r = https_ref(&server, "/dev.gguf");
    let (c1, c2) = (cache.clone(), cache.clone());
    let (r1, r2) = (r.clone(), r.clone());
    let a = tokio::spawn(async move { c1.fetch(&r1, Some(DEV_DIGEST), &no_progress).await });
    let b = tokio::spawn(async move { c2.fetch(&r2, None, &no_progress).await });
    let (a, b) = (
        a.await.expect("join").expect("first"),
        b.await.expect("join").expect("second"),
    );
    assert_eq!(server.gets("/dev.gguf"), 1);
    assert_eq!(
        (a.digest.as_str(), b.digest.as_str()),
        (DEV_DIGEST, DEV_DIGEST)
    );
    let mut downloaded = [a.downloaded_bytes, b.downloaded_bytes];
    downloaded.sort_unstable();
    assert_eq!(downloaded, [0, dev_size()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caches_on_one_dir_download_once() {
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    };
    let (one, two) = (
        ModelCache::new(cfg.clone()).expect("cache 1"),
        ModelCache::new(cfg).expect("cache 2"),
    );
    let r = https_ref(&server, "/dev.gguf");
    let (r1, r2) = (r.clone(), r.clone());
    let a = tokio::spawn(async move { one.fetch(&r1, Some(DEV_DIGEST), &no_progress).await });
    let b = tokio::spawn(async move { two.fetch(&r2, Some(DEV_DIGEST), &no_progress).await });
    let (a, b) = (
        a.await.expect("join").expect("first"),
        b.await.expect("join").expect("second"),
    );
    assert_eq!(server.gets("/dev.gguf"), 1);
    assert_eq!(a.downloaded_bytes + b.downloaded_bytes, dev_size());
    assert_eq!(
        files_under(dir.path()).len(),
        2,
        "model and sidecar; no lock or part file"
    );
}

#[tokio::test]
async fn hf_with_token_redirect_and_404() {
    let server =
        FileServer::start(Options::new().require_token("hf_test_token").hf_redirect()).await;
    let key = server.serve_hf(
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "main",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        dev_model(),
    );
    let r = hf_ref("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf");

    let dir = tempfile::tempdir().expect("tempdir");
    let no_token = ModelCache::new(CacheConfig {
        hf_endpoint: server.url(),
        ..config(dir.path())
    })
    .expect("cache");
    let err = no_token
        .fetch(&r, None, &no_progress)
        .await
        .expect_err("no token");
    assert!(matches!(err, FetchError::Unauthorized(_)), "{err:?}");
    let bad = ModelCache::new(CacheConfig {
        hf_endpoint: server.url(),
        hf_token: Some("wrong".into()),
        ..config(dir.path())
    })
    .expect("cache");
    assert!(matches!(
        bad.fetch(&r, None, &no_progress).await,
        Err(FetchError::Unauthorized(_))
    ));
    assert!(files_under(dir.path()).is_empty());

    let cache = ModelCache::new(CacheConfig {
        hf_endpoint: format!("{}/", server.url()),
        hf_token: Some("hf_test_token".into()),
        ..config(dir.path())
    })
    .expect("cache");
    let got = cache
        .fetch(&r, Some(DEV_DIGEST), &no_progress)
        .await
        .expect("hf fetch");
    assert_eq!(
        got.path,
        dir.path().join(
            "hf/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/main/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    );
    assert_eq!(got.downloaded_bytes, dev_size());
    assert_eq!(server.gets(&key), 1);
    assert!(
        !std::fs::read_to_string(models::layout::sidecar_path(&got.path))
            .expect("sidecar")
            .contains("hf_test_token")
    );

    let missing = hf_ref("hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@v9/absent.gguf");
    let err = cache
        .fetch(&missing, None, &no_progress)
        .await
        .expect_err("404");
    assert!(matches!(err, FetchError::NotFound(_)), "{err:?}");
    let env = err.envelope();
    assert_eq!(
        (env.code, env.retriable),
        (api::ErrorCode::ModelNotAvailable, false)
    );
    assert_eq!(
        files_under(dir.path()).len(),
        2,
        "only the earlier model and its sidecar"
    );
}

#[tokio::test]
async fn network_errors_are_retriable() {
    // A port with nothing listening: connection refused on every attempt.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        hf_endpoint: format!("http://127.0.0.1:{port}"),
        ..config(dir.path())
    })
    .expect("cache");
    let err = cache
        .fetch(&hf_ref("hf:o/r/m.gguf"), None, &no_progress)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            FetchError::Network {
                retriable: true,
                ..
            }
        ),
        "{err:?}"
    );
    let env = err.envelope();
    assert_eq!(
        (env.code, env.retriable, env.http_status()),
        (api::ErrorCode::ModelNotAvailable, true, 503)
    );
    assert!(files_under(dir.path()).is_empty());
}

#[tokio::test]
async fn quota_evicts_lru_and_respects_in_use() {
    let src = tempfile::tempdir().expect("tempdir");
    let server = FileServer::start(Options::new()).await;
    for (name, fill) in [("a", 1u8), ("b", 2), ("c", 3)] {
        let p = small_gguf(src.path(), &format!("{name}.gguf"), 1000, fill);
        server.serve_hf("org/repo", "main", &format!("{name}.gguf"), p);
    }
    let r = |name: &str| hf_ref(&format!("hf:org/repo/{name}.gguf"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = CacheConfig {
        hf_endpoint: server.url(),
        quota_bytes: Some(2500),
        ..config(dir.path())
    };
    let cache = ModelCache::new(cfg.clone()).expect("cache");
    let pause = || tokio::time::sleep(Duration::from_millis(30));

    let a = cache
        .fetch(&r("a"), None, &no_progress)
        .await
        .expect("a")
        .path;
    pause().await;
    let b = cache
        .fetch(&r("b"), None, &no_progress)
        .await
        .expect("b")
        .path;
    pause().await;
    // A cache hit counts as a use: a is now more recent than b.
    assert_eq!(
        cache
            .fetch(&r("a"), None, &no_progress)
            .await
            .expect("a again")
            .downloaded_bytes,
        0
    );
    pause().await;
    // b is least recently used but loaded: the download of c evicts a instead.
    cache.set_in_use(vec![b.clone()]);
    let c = cache
        .fetch(&r("c"), None, &no_progress)
        .await
        .expect("c")
        .path;
    assert!(
        !a.exists() && !models::layout::sidecar_path(&a).exists(),
        "a evicted"
    );
    assert!(b.exists() && c.exists());
    assert_eq!(cache.cached_entries().len(), 2);

    // Another cache on the same dir with a smaller quota: explicit enforcement keeps `in_use`.
    let small = ModelCache::new(CacheConfig {
        quota_bytes: Some(1500),
        ..cfg
    })
    .expect("cache");
    assert_eq!(
        small.enforce_quota(std::slice::from_ref(&b)),
        vec![c.clone()]
    );
    assert!(b.exists() && !c.exists());
    assert!(small.enforce_quota(&[]).is_empty(), "under the quota now");

    // evict() of a cached ref removes it and its sidecar; a second call finds nothing.
    assert!(cache.evict(&r("b")).expect("evict"));
    assert!(!b.exists() && !models::layout::sidecar_path(&b).exists());
    assert!(!cache.evict(&r("b")).expect("evict again"));
    assert!(files_under(dir.path()).is_empty());
}

#[tokio::test]
async fn file_models_are_used_in_place_and_never_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models_dir = dir.path().join("models");
    let cache = ModelCache::new(CacheConfig {
        quota_bytes: Some(0),
        ..config(&models_dir)
    })
    .expect("cache");
    let dev = dev_model();
    let r = ModelRef::parse(&format!("file:{}", dev.display())).expect("file ref");
    assert_eq!(cache.path_for(&r), dev);
    let got = cache
        .fetch(&r, Some(DEV_DIGEST), &no_progress)
        .await
        .expect("file fetch");
    assert_eq!(
        (
            got.path.as_path(),
            got.digest.as_str(),
            got.downloaded_bytes
        ),
        (dev.as_path(), DEV_DIGEST, 0)
    );
    assert_eq!(got.metadata.context_length, Some(8192));
    assert!(files_under(&models_dir).is_empty(), "never copied");
    let again = cache.fetch(&r, None, &no_progress).await.expect("again");
    assert_eq!(again.digest, DEV_DIGEST);

    let err = cache
        .fetch(&r, Some(WRONG_DIGEST), &no_progress)
        .await
        .expect_err("mismatch");
    assert!(matches!(err, FetchError::DigestMismatch { .. }));
    let err = cache
        .verify(&r, WRONG_DIGEST)
        .await
        .expect_err("verify mismatch");
    assert!(matches!(err, FetchError::DigestMismatch { .. }));
    assert!(
        dev.is_file(),
        "a file: model survives a failed verification"
    );
    assert!(!cache.evict(&r).expect("evict"));
    assert!(cache.enforce_quota(&[]).is_empty());
    assert!(dev.is_file(), "a file: model survives evict and quota");

    // A file: model inside models_dir is still never evicted.
    let inside = small_gguf(&models_dir, "mine.gguf", 100, 0);
    let inside_ref = ModelRef::parse(&format!("file:{}", inside.display())).expect("ref");
    cache
        .fetch(&inside_ref, None, &no_progress)
        .await
        .expect("fetch inside");
    assert!(!cache.evict(&inside_ref).expect("evict"));
    assert!(inside.is_file());

    let missing =
        ModelRef::parse(&format!("file:{}/absent.gguf", dir.path().display())).expect("ref");
    match cache.fetch(&missing, None, &no_progress).await {
        Err(FetchError::NotFound(msg)) => assert!(
            msg.contains("absent.gguf") && msg.contains("does not exist"),
            "{msg}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        cache.verify(&missing, DEV_DIGEST).await,
        Err(FetchError::NotFound(_))
    ));
}

#[tokio::test]
async fn not_a_gguf_is_invalid_and_not_kept() {
    let src = tempfile::tempdir().expect("tempdir");
    let junk = src.path().join("junk.gguf");
    std::fs::write(&junk, b"<html>not a model</html>").expect("write");
    let server = FileServer::start(Options::new()).await;
    server.serve_hf("o/r", "main", "junk.gguf", &junk);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        hf_endpoint: server.url(),
        ..config(dir.path())
    })
    .expect("cache");
    let err = cache
        .fetch(&hf_ref("hf:o/r/junk.gguf"), None, &no_progress)
        .await
        .expect_err("junk");
    assert!(matches!(err, FetchError::Invalid(_)), "{err:?}");
    assert!(files_under(dir.path()).is_empty());
}

#[test]
fn bad_digests_and_endpoints_are_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        ModelCache::new(CacheConfig {
            hf_endpoint: "ftp://x".into(),
            ..config(dir.path())
        }),
        Err(FetchError::Invalid(_))
    ));
    assert!(matches!(
        ModelCache::new(CacheConfig {
            extra_root_pem: Some(b"not a pem".to_vec()),
            ..config(dir.path())
        }),
        Err(FetchError::Invalid(_))
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cache = ModelCache::new(config(dir.path())).expect("cache");
    let r = ModelRef::parse(&format!("file:{}", dev_model().display())).expect("ref");
    let err = rt
        .block_on(cache.fetch(&r, Some("md5:abc"), &no_progress))
        .expect_err("bad digest");
    assert!(matches!(err, FetchError::Invalid(_)), "{err:?}");
}

/// Environment of the child half of [`two_processes_on_one_dir_download_once`].
const CHILD_ENV: &str = "LLORCH_MODELS_TEST_CHILD";

/// The child half of the cross-process test, not a test of its own: ignored, so a normal run skips
/// it, and started by [`two_processes_on_one_dir_download_once`] with `--ignored --exact` and
/// `CHILD_ENV` set to `<models_dir>\n<ref>\n<ca pem path>`; it fetches and prints the bytes it
/// downloaded. Started any other way it fails, so it can never pass without doing its work.
#[tokio::test]
#[ignore = "helper process of two_processes_on_one_dir_download_once; started only by it"]
async fn child_fetch_helper() {
    let spec = std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("child_fetch_helper is started by two_processes_on_one_dir_download_once only")
    });
    let mut lines = spec.lines();
    let (Some(dir), Some(r), Some(pem)) = (lines.next(), lines.next(), lines.next()) else {
        panic!("bad {CHILD_ENV}: {spec:?}")
    };
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: Some(std::fs::read(pem).expect("pem")),
        ..config(Path::new(dir))
    })
    .expect("cache");
    let got = cache
        .fetch(
            &ModelRef::parse(r).expect("ref"),
            Some(DEV_DIGEST),
            &no_progress,
        )
        .await
        .expect("child fetch");
    println!("CHILD downloaded_bytes={}", got.downloaded_bytes);
}

#[tokio::test]
async fn two_processes_on_one_dir_download_once() {
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let models_dir = dir.path().join("models");
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, server.ca_pem().expect("pem")).expect("write pem");
    let r = https_ref(&server, "/dev.gguf");
    let spec = format!("{}\n{r}\n{}", models_dir.display(), pem.display());
    let exe = std::env::current_exe().expect("test binary");
    let child = tokio::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "child_fetch_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(&models_dir)
    })
    .expect("cache");
    let mine = cache
        .fetch(&r, Some(DEV_DIGEST), &no_progress)
        .await
        .expect("parent fetch");
    let out = child.wait_with_output().await.expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    let theirs: u64 = stdout
        .split("CHILD downloaded_bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("child output: {stdout}"));
    assert_eq!(server.gets("/dev.gguf"), 1);
    assert_eq!(mine.downloaded_bytes + theirs, dev_size());
    assert_eq!(files_under(&models_dir).len(), 2, "model and sidecar only");
}

#[tokio::test]
async fn a_dropped_fetch_leaves_no_part_or_lock_file() {
    let server = FileServer::start_tls(Options::new().fail_first_gets(1)).await;
    server.serve("/dev.gguf", dev_model());
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ModelCache::new(CacheConfig {
        extra_root_pem: server.ca_pem(),
        ..config(dir.path())
    })
    .expect("cache");
    let r = https_ref(&server, "/dev.gguf");
    // The first GET answers 503 at once; the fetch then sleeps in its backoff, where it is dropped.
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        cache.fetch(&r, Some(DEV_DIGEST), &no_progress),
    )
    .await;
    assert!(cut.is_err(), "still in its backoff");
    assert!(
        files_under(dir.path()).is_empty(),
        "{:?}",
        files_under(dir.path())
    );
    let got = cache
        .fetch(&r, Some(DEV_DIGEST), &no_progress)
        .await
        .expect("fetch after a dropped one");
    assert_eq!(got.downloaded_bytes, dev_size());
}
