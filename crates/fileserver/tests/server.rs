//! The file server's own contract: ranges, HEAD, ETag, tokens, HF routes and redirects, faults,
//! counters and TLS with the generated certificate.

use fileserver::{FileServer, Options};

fn sample() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &bytes).expect("write");
    (dir, path, bytes)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn get_range_head_and_counters() {
    let (_dir, path, bytes) = sample();
    let server = FileServer::start(Options::new()).await;
    server.serve("/files/blob.bin", &path);
    let url = format!("{}/files/blob.bin", server.url());
    let c = client();

    let resp = c.get(&url).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(bytes.len() as u64));
    let etag = resp.headers().get("etag").expect("etag").clone();
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &bytes[..]);

    let resp = c
        .get(&url)
        .header("range", "bytes=1000-")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-{}/{}", bytes.len() - 1, bytes.len()).as_str()
    );
    assert_eq!(resp.bytes().await.expect("body").as_ref(), &bytes[1000..]);

    let resp = c.head(&url).send().await.expect("head");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(resp.headers()["etag"], etag);

    let resp = c
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .expect("416");
    assert_eq!(resp.status(), 416);
    assert_eq!(
        c.get(format!("{}/nope", server.url()))
            .send()
            .await
            .expect("404")
            .status(),
        404
    );

    assert_eq!(
        server.gets("/files/blob.bin"),
        2,
        "HEAD, 416 and 404 do not count"
    );
    assert_eq!(
        server.bytes_sent("/files/blob.bin"),
        (2 * bytes.len() - 1000) as u64
    );
}

#[tokio::test]
async fn hf_routes_tokens_and_redirects() {
    let (_dir, path, bytes) = sample();
    let server = FileServer::start(Options::new().require_token("secret").hf_redirect()).await;
    let key = server.serve_hf("org/repo", "main", "sub/m.gguf", &path);
    assert_eq!(key, "/org/repo/resolve/main/sub/m.gguf");
    let url = format!("{}{key}", server.url());
    let c = client();
    let resp = c.get(&url).send().await.expect("no token");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        c.get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .expect("bad token")
            .status(),
        401
    );
    let resp = c
        .get(&url)
        .bearer_auth("secret")
        .send()
        .await
        .expect("redirect");
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let resp = c
        .get(format!("{}{location}", server.url()))
        .send()
        .await
        .expect("cdn");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body").len(), bytes.len());
    assert_eq!(server.gets(&key), 1);
}

#[tokio::test]
async fn faults_interrupt_corrupt_fail() {
    let (_dir, path, bytes) = sample();
    let server = FileServer::start(
        Options::new()
            .interrupt_first_after(100_000)
            .corrupt()
            .fail_first_gets(1),
    )
    .await;
    server.serve("/b", &path);
    let url = format!("{}/b", server.url());
    let c = client();
    assert_eq!(c.get(&url).send().await.expect("503").status(), 503);
    let first = c.get(&url).send().await.expect("interrupted");
    assert_eq!(first.status(), 200);
    assert!(first.bytes().await.is_err(), "the first body is cut");
    let whole = c
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("whole body");
    assert_eq!(whole.len(), bytes.len());
    let diffs: Vec<usize> = (0..bytes.len()).filter(|&i| whole[i] != bytes[i]).collect();
    assert_eq!(diffs, vec![bytes.len() / 2]);
    assert_eq!(server.gets("/b"), 2);
    assert!(server.bytes_sent("/b") >= bytes.len() as u64 + 100_000);
}

#[tokio::test]
async fn tls_with_generated_ca() {
    let (_dir, path, bytes) = sample();
    let server = FileServer::start_tls(Options::new()).await;
    server.serve("/b", &path);
    let pem = server.ca_pem().expect("pem");
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("cert"))
        .build()
        .expect("client");
    for base in [server.url(), server.localhost_url()] {
        let body = trusted
            .get(format!("{base}/b"))
            .send()
            .await
            .expect("https get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.len(), bytes.len(), "{base}");
    }
    let untrusted = reqwest::Client::new();
    assert!(
        untrusted
            .get(format!("{}/b", server.url()))
            .send()
            .await
            .is_err(),
        "an untrusted certificate must fail"
    );
}
