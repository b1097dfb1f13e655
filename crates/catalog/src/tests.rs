#![allow(clippy::unwrap_used)]

use super::*;

const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HEX_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SMOL: &str = "hf:HuggingFaceTB/SmolLM2-135M@main/SmolLM2-135M-Instruct.Q4_1.gguf";

fn digest_a() -> String {
    format!("sha256:{HEX_A}")
}

fn digest_b() -> String {
    format!("sha256:{HEX_B}")
}

fn all_schemes() -> Vec<String> {
    ["hf", "https", "file"].map(String::from).to_vec()
}

fn req(id: Option<&str>, model_ref: &str, digest: Option<&str>) -> RegisterModel {
    RegisterModel {
        id: id.map(|i| i.parse().unwrap()),
        model_ref: model_ref.into(),
        digest: digest.map(String::from),
    }
}

fn mem() -> Catalog {
    Catalog::open_in_memory().unwrap()
}

fn register(
    c: &mut Catalog,
    id: Option<&str>,
    model_ref: &str,
    digest: Option<&str>,
) -> Result<Registered, ErrorEnvelope> {
    // The body's id is a `ModelId`, checked when the body is parsed (the HTTP layer reports a bad
    // one as INVALID_PARAMS, field `id`, before looking at anything else); this does the same.
    if let Some(Err(e)) = id.map(str::parse::<api::ModelId>) {
        return Err(ErrorEnvelope::invalid("id", e.0));
    }
    c.register(&req(id, model_ref, digest), &all_schemes())
}

fn copy(node: &str, digest: Option<&str>, verified: bool) -> Copy {
    Copy {
        node_id: node.parse().unwrap(),
        digest: digest.map(String::from),
        size_bytes: None,
        metadata: None,
        verified,
    }
}

fn owned(c: &Catalog) -> Vec<ModelRecord> {
    c.list().into_iter().cloned().collect()
}

#[test]
fn register_created_then_existing() {
    let mut c = mem();
    let created = register(&mut c, Some("m1"), "file:///models/m.gguf", None).unwrap();
    let Registered::Created(rec) = &created else {
        panic!("{created:?}")
    };
    assert_eq!(rec.id, "m1");
    assert_eq!(rec.model_ref, "file:/models/m.gguf", "stored normalized");
    assert_eq!(rec.state, ModelState::Active);
    assert_eq!(
        (rec.digest.as_deref(), rec.size_bytes, rec.last_verified_ms),
        (None, None, None)
    );
    assert!(rec.locations.is_empty());
    assert_eq!(c.get("m1"), Some(rec));
    assert_eq!(
        c.by_ref("file:/models/m.gguf").map(|r| r.id.as_str()),
        Some("m1")
    );

    // The same entry again, in another spelling of the ref: 200 with the same record.
    let again = register(&mut c, Some("m1"), "file:/models/m.gguf", None).unwrap();
    assert_eq!(again, Registered::Existing(rec.clone()));
    assert_eq!(c.list().len(), 1);

    // With a digest: identical requests are Existing, also when the later one omits it.
    register(&mut c, Some("m2"), "file:/models/n.gguf", Some(&digest_a())).unwrap();
    assert!(matches!(
        register(&mut c, Some("m2"), "file:/models/n.gguf", Some(&digest_a())),
        Ok(Registered::Existing(_))
    ));
    assert!(matches!(
        register(&mut c, Some("m2"), "file:/models/n.gguf", None),
        Ok(Registered::Existing(_))
    ));
    assert_eq!(
        c.list().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2"]
    );
}

#[test]
fn register_conflict_on_different_ref() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/models/a.gguf", None).unwrap();
    let before = owned(&c);
    let e = register(&mut c, Some("m"), "file:/models/b.gguf", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.http_status(), 409);
    assert!(
        e.message.contains("file:/models/a.gguf") && e.message.contains("file:/models/b.gguf"),
        "{}",
        e.message
    );
    assert_eq!(owned(&c), before);
}

#[test]
fn register_conflict_on_different_digest() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/models/a.gguf", Some(&digest_a())).unwrap();
    let e = register(&mut c, Some("m"), "file:/models/a.gguf", Some(&digest_b())).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    // An entry without a digest is not identical to a request with one.
    register(&mut c, Some("n"), "file:/models/n.gguf", None).unwrap();
    let e = register(&mut c, Some("n"), "file:/models/n.gguf", Some(&digest_a())).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(c.get("m").unwrap().digest, Some(digest_a()));
    assert_eq!(c.get("n").unwrap().digest, None);
}

#[test]
fn id_derivation() {
    let mut c = mem();
    let rec = register(&mut c, None, SMOL, None).unwrap().into_record();
    assert_eq!(rec.id, "smollm2-135m-instruct.q4_1");
    let rec = register(&mut c, None, "file:/m/My Model.gguf", None)
        .unwrap()
        .into_record();
    assert_eq!(rec.id, "my-model");

    // A derived id that clashes with another ref.
    let e = register(&mut c, None, "https://example.com/x/My%Model.gguf", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");

    // A given id must be a valid model id.
    let e = register(&mut c, Some("Bad/Id"), SMOL, None).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("id"))
    );

    // A file name that gives no valid id needs an explicit one.
    let e = register(&mut c, None, "file:/m/-x.gguf", None).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("ref")),
        "{e:?}"
    );
    assert!(matches!(
        register(&mut c, Some("x"), "file:/m/-x.gguf", None),
        Ok(Registered::Created(_))
    ));
    assert_eq!(c.list().len(), 3);
}

#[test]
fn digests_normalised_and_bad_ones_refused() {
    let mut c = mem();
    let upper = format!("SHA256:{}", HEX_A.to_uppercase());
    let rec = register(&mut c, Some("m"), "file:/m.gguf", Some(&upper))
        .unwrap()
        .into_record();
    assert_eq!(rec.digest, Some(digest_a()));
    // The upper-case spelling is the same digest.
    assert!(matches!(
        register(&mut c, Some("m"), "file:/m.gguf", Some(&upper)),
        Ok(Registered::Existing(_))
    ));

    for bad in [
        "sha256:abc".to_string(),
        format!("md5:{HEX_A}"),
        HEX_A.to_string(),
    ] {
        let e = register(&mut c, Some("n"), "file:/n.gguf", Some(&bad)).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidParams, Some("digest")),
            "{bad}"
        );
    }
    assert!(c.get("n").is_none(), "bad input changes nothing");
}

#[test]
fn untrusted_and_invalid_refs() {
    let mut c = mem();
    let only_hf = vec!["hf".to_string()];
    let e = c
        .register(&req(None, "https://example.com/m.gguf", None), &only_hf)
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::UntrustedArtifact, None)
    );
    assert_eq!(e.http_status(), 400);
    let e = c
        .register(&req(None, "file:/m/m.gguf", None), &only_hf)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UntrustedArtifact);

    let e = register(&mut c, None, "http://example.com/m.gguf", None).unwrap_err();
    assert_eq!(e.code, ErrorCode::UntrustedArtifact);

    let e = register(&mut c, None, "file:models/m.gguf", None).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("ref"))
    );
    let e = register(&mut c, None, "s3://bucket/m.gguf", None).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("ref"))
    );

    // A bad id is reported before a bad ref (document order: id, ref, digest).
    let e = register(&mut c, Some("BAD"), "http://example.com/m.gguf", Some("x")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("id"));
    let e = register(&mut c, None, "file:rel.gguf", Some("x")).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("ref"));
    assert!(c.list().is_empty());
}

#[test]
fn resolve_by_id_and_by_ref() {
    let mut c = mem();
    let rec = register(&mut c, Some("smol"), SMOL, None)
        .unwrap()
        .into_record();
    let all = all_schemes();
    assert_eq!(c.resolve("smol", &all, false).unwrap(), Some(rec.clone()));
    assert_eq!(
        c.resolve("nope", &all, true).unwrap(),
        None,
        "an unknown id is never registered"
    );
    assert_eq!(c.resolve(SMOL, &all, false).unwrap(), Some(rec.clone()));

    // A file ref in its un-normalized spelling finds the normalized record.
    let f = register(&mut c, Some("f"), "file:/models/f.gguf", None)
        .unwrap()
        .into_record();
    assert_eq!(
        c.resolve("file:///models/f.gguf", &all, false).unwrap(),
        Some(f)
    );

    // A known ref whose scheme is no longer allowed is refused.
    let e = c.resolve(SMOL, &["file".to_string()], false).unwrap_err();
    assert_eq!(e.code, ErrorCode::UntrustedArtifact);
    let e = c
        .resolve("http://example.com/m.gguf", &all, true)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UntrustedArtifact);
    let e = c.resolve("file:rel/m.gguf", &all, true).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidParams, Some("ref"))
    );
}

#[test]
fn resolve_auto_register() {
    let mut c = mem();
    let all = all_schemes();
    let new_ref = "https://example.com/models/Tiny.gguf";
    assert_eq!(c.resolve(new_ref, &all, false).unwrap(), None);
    assert!(c.list().is_empty(), "auto_register off registers nothing");

    let rec = c.resolve(new_ref, &all, true).unwrap().unwrap();
    assert_eq!(
        (rec.id.as_str(), rec.model_ref.as_str(), rec.state),
        ("tiny", new_ref, ModelState::Active)
    );
    assert_eq!(c.get("tiny"), Some(&rec));
    // Resolving again finds it without registering twice.
    assert_eq!(c.resolve(new_ref, &all, true).unwrap(), Some(rec));
    assert_eq!(c.list().len(), 1);

    // The derived id of another ref clashes: 409.
    let e = c.resolve("file:/other/tiny.gguf", &all, true).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(c.list().len(), 1);
}

#[test]
fn set_state_and_not_found() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    let rec = c.set_state("m", ModelState::Retired).unwrap();
    assert_eq!(rec.state, ModelState::Retired);
    assert_eq!(c.get("m").unwrap().state, ModelState::Retired);
    assert_eq!(
        c.set_state("m", ModelState::Retired).unwrap().state,
        ModelState::Retired
    );
    assert_eq!(
        c.set_state("m", ModelState::Active).unwrap().state,
        ModelState::Active
    );
    let e = c.set_state("nope", ModelState::Retired).unwrap_err();
    assert_eq!((e.code, e.http_status()), (ErrorCode::NotFound, 404));
}

#[test]
fn record_copy_first_digest_wins() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();

    // First report: digest recorded (upper case normalised), size and metadata filled in.
    let meta = GgufInfo {
        architecture: Some("llama".into()),
        context_length: Some(8192),
        ..GgufInfo::default()
    };
    let first = Copy {
        node_id: "n1".parse().unwrap(),
        digest: Some(format!("sha256:{}", HEX_A.to_uppercase())),
        size_bytes: Some(1234),
        metadata: Some(meta.clone()),
        verified: false,
    };
    assert_eq!(c.record_copy("m", first).unwrap(), CopyOutcome::Recorded);
    let rec = c.get("m").unwrap().clone();
    assert_eq!(
        (rec.digest.clone(), rec.size_bytes, rec.metadata.clone()),
        (Some(digest_a()), Some(1234), Some(meta))
    );
    assert!(
        rec.locations.is_empty() && rec.last_verified_ms.is_none(),
        "not verified: no location"
    );

    // Another digest later: mismatch, nothing changes.
    let second = Copy {
        size_bytes: Some(99),
        ..copy("n2", Some(&digest_b()), true)
    };
    assert_eq!(
        c.record_copy("m", second).unwrap(),
        CopyOutcome::Mismatch {
            expected: digest_a(),
            actual: digest_b()
        }
    );
    assert_eq!(c.get("m"), Some(&rec));

    // A copy without a digest does not overwrite size and metadata of the digested file.
    let blind = Copy {
        size_bytes: Some(5),
        ..copy("n3", None, false)
    };
    assert_eq!(c.record_copy("m", blind).unwrap(), CopyOutcome::Recorded);
    assert_eq!(c.get("m"), Some(&rec));

    // The matching copy, verified: location added, last_verified_ms set.
    let t0 = now_ms();
    assert_eq!(
        c.record_copy("m", copy("n1", Some(&digest_a()), true))
            .unwrap(),
        CopyOutcome::Recorded
    );
    let rec = c.get("m").unwrap();
    assert_eq!(rec.locations, ["n1"]);
    assert!(rec
        .last_verified_ms
        .is_some_and(|t| t >= t0 && t <= now_ms()));
}

#[test]
fn record_copy_against_a_given_digest() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/m.gguf", Some(&digest_b())).unwrap();
    let out = c
        .record_copy("m", copy("n1", Some(&digest_a()), true))
        .unwrap();
    assert_eq!(
        out,
        CopyOutcome::Mismatch {
            expected: digest_b(),
            actual: digest_a()
        }
    );
    assert!(c.get("m").unwrap().locations.is_empty());

    assert!(
        matches!(c.record_copy("nope", copy("n1", None, true)), Err(StoreError::UnknownModel(id)) if id == "nope")
    );
    let e = c
        .record_copy("m", copy("n1", Some("sha256:xyz"), true))
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidDigest { .. }), "{e}");
    assert_eq!(ErrorEnvelope::from(e).field.as_deref(), Some("digest"));
    assert_eq!(
        ErrorEnvelope::from(StoreError::UnknownModel("x".into())).code,
        ErrorCode::NotFound
    );
}

#[test]
fn locations_sorted_dedup_and_removed() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    for node in ["zeta", "alpha", "mid", "alpha"] {
        c.record_copy("m", copy(node, None, true)).unwrap();
    }
    assert_eq!(c.get("m").unwrap().locations, ["alpha", "mid", "zeta"]);
    c.remove_location("m", "mid").unwrap();
    assert_eq!(c.get("m").unwrap().locations, ["alpha", "zeta"]);
    c.remove_location("m", "absent").unwrap();
    assert_eq!(c.get("m").unwrap().locations, ["alpha", "zeta"]);
    assert!(matches!(
        c.remove_location("nope", "alpha"),
        Err(StoreError::UnknownModel(_))
    ));
}

#[test]
fn adopt_reported_models() {
    let mut c = mem();
    let upper = format!("sha256:{}", HEX_A.to_uppercase());
    let rec = c
        .adopt_reported("local", "file:///srv/local.gguf", Some(&upper))
        .unwrap();
    assert_eq!(
        (
            rec.id.as_str(),
            rec.model_ref.as_str(),
            rec.digest.clone(),
            rec.state
        ),
        (
            "local",
            "file:/srv/local.gguf",
            Some(digest_a()),
            ModelState::Active
        )
    );
    assert_eq!(c.get("local"), Some(&rec));
    // Reported again: the same record.
    assert_eq!(
        c.adopt_reported("local", "file:/srv/local.gguf", None)
            .unwrap(),
        rec
    );

    // Same id, another ref: a clash naming both refs; nothing changes.
    let e = c
        .adopt_reported("local", "file:/srv/other.gguf", None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(
        e.message.contains("file:/srv/local.gguf") && e.message.contains("file:/srv/other.gguf"),
        "{}",
        e.message
    );
    assert_eq!(c.list(), [&rec]);

    assert_eq!(
        c.adopt_reported("Bad Id", "file:/x.gguf", None)
            .unwrap_err()
            .field
            .as_deref(),
        Some("id")
    );
    assert_eq!(
        c.adopt_reported("x", "file:/x.gguf", Some("md5:1"))
            .unwrap_err()
            .field
            .as_deref(),
        Some("digest")
    );
    assert_eq!(c.list().len(), 1);
}

#[test]
fn delete_entries() {
    let mut c = mem();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    c.record_copy("m", copy("n1", None, true)).unwrap();
    let removed = c.delete("m").unwrap().unwrap();
    assert_eq!(
        (removed.id.as_str(), removed.locations.as_slice()),
        ("m", ["n1".parse().unwrap()].as_slice())
    );
    assert!(c.get("m").is_none() && c.by_ref("file:/m.gguf").is_none() && c.list().is_empty());
    assert_eq!(c.delete("m").unwrap(), None);
    // The id and ref are free again.
    assert!(matches!(
        register(&mut c, Some("m"), "file:/other.gguf", None),
        Ok(Registered::Created(_))
    ));
}

#[test]
fn several_ids_for_one_ref() {
    let mut c = mem();
    register(&mut c, Some("b"), "file:/m.gguf", None).unwrap();
    register(&mut c, Some("a"), "file:/m.gguf", None).unwrap();
    assert_eq!(c.by_ref("file:/m.gguf").unwrap().id, "a");
    c.delete("a").unwrap();
    assert_eq!(c.by_ref("file:/m.gguf").unwrap().id, "b");
}

// ---- persistence ----

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/nested/catalog.sqlite");
    let expected = {
        let mut c = Catalog::open(&path).unwrap();
        assert_eq!(c.path(), path);
        register(&mut c, Some("a"), SMOL, Some(&digest_a())).unwrap();
        register(&mut c, Some("b"), "https://example.com/b.gguf", None).unwrap();
        c.adopt_reported("c", "file:/srv/c.gguf", None).unwrap();
        register(&mut c, Some("gone"), "file:/gone.gguf", None).unwrap();
        let meta = GgufInfo {
            architecture: Some("llama".into()),
            context_length: Some(8192),
            parameter_count: Some(134_515_008),
            quantization: Some("Q4_1".into()),
            chat_template: true,
        };
        let full = Copy {
            size_bytes: Some(u64::from(u32::MAX) + 7),
            metadata: Some(meta),
            ..copy("n2", Some(&digest_a()), true)
        };
        c.record_copy("a", full).unwrap();
        c.record_copy("a", copy("n1", Some(&digest_a()), true))
            .unwrap();
        c.record_copy("b", copy("n1", Some(&digest_b()), false))
            .unwrap();
        c.record_copy("c", copy("n3", None, true)).unwrap();
        c.remove_location("c", "n3").unwrap();
        c.set_state("b", ModelState::Retired).unwrap();
        c.delete("gone").unwrap();
        owned(&c)
    };
    assert_eq!(expected.len(), 3);
    assert_eq!(expected[0].locations, ["n1", "n2"]);
    assert!(expected[0].metadata.is_some() && expected[0].last_verified_ms.is_some());

    let c = Catalog::open(&path).unwrap();
    assert_eq!(owned(&c), expected);
    assert_eq!(c.by_ref(SMOL).map(|r| r.id.as_str()), Some("a"));
    assert!(c.get("gone").is_none());
    drop(c);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 1);
}

#[test]
fn failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let mut c = Catalog::open(&path).unwrap();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    let before = owned(&c);
    // SQLite integers are i64: this size cannot be stored, so the whole write is rolled back
    // (the digest and location of the same report included).
    let huge = Copy {
        size_bytes: Some(u64::MAX),
        ..copy("n1", Some(&digest_a()), true)
    };
    let e = c.record_copy("m", huge).unwrap_err();
    assert!(matches!(e, StoreError::Write { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(owned(&c), before, "the mirror is unchanged");
    assert_eq!(ErrorEnvelope::from(e).code, ErrorCode::Internal);
    drop(c);
    assert_eq!(
        owned(&Catalog::open(&path).unwrap()),
        before,
        "the file is unchanged"
    );
}

#[test]
fn future_schema_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    drop(Catalog::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = Catalog::open(&path).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::FutureSchema {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("99") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
    assert_eq!(user_version(&path), 99, "never downgraded");
}

#[test]
fn foreign_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    }
    assert!(matches!(
        Catalog::open(&path),
        Err(StoreError::Foreign { .. })
    ));
    assert_eq!(user_version(&path), 0, "not stamped");

    let path = dir.path().join("v1-other.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let e = Catalog::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::Foreign { .. }), "{e}");
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn corrupt_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.sqlite");
    std::fs::write(&path, noise(16 * 1024, 0x9e37_79b9_7f4a_7c15)).unwrap();
    let e = Catalog::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");

    // A real catalog whose pages after the header are overwritten.
    let path = dir.path().join("damaged.sqlite");
    {
        let mut c = Catalog::open(&path).unwrap();
        for i in 0..50 {
            register(
                &mut c,
                Some(&format!("m{i}")),
                &format!("file:/m/{i}.gguf"),
                None,
            )
            .unwrap();
        }
    }
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096, "{}", bytes.len());
    let len = bytes.len();
    bytes[100..len].copy_from_slice(&noise(len - 100, 42));
    std::fs::write(&path, bytes).unwrap();
    let e = Catalog::open(&path).unwrap_err();
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn unopenable_paths_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    // The parent "directory" is a file.
    let e = Catalog::open(&file.join("catalog.sqlite")).unwrap_err();
    assert!(matches!(e, StoreError::CreateDir { .. }), "{e}");
    // The path is a directory.
    let e = Catalog::open(dir.path()).unwrap_err();
    assert!(matches!(e, StoreError::Open { .. }), "{e}");
}

#[test]
fn deferred_writes_reach_the_store_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let (mut c, mut store) = Catalog::open_deferred(&path).unwrap();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    c.record_copy("m", copy("n1", Some(&digest_a()), true))
        .unwrap();
    register(&mut c, Some("gone"), "file:/gone.gguf", None).unwrap();
    c.delete("gone").unwrap();
    // The mirror changed at once; nothing is on disk until the writes are applied.
    let mirror = owned(&c);
    assert_eq!(mirror.len(), 1);
    assert!(store.load().unwrap().is_empty());
    let writes = c.take_writes();
    assert_eq!(writes.len(), 4);
    assert!(c.take_writes().is_empty(), "taken once");
    for w in &writes {
        store.apply(w).unwrap();
    }
    assert_eq!(store.load().unwrap(), mirror);
    drop(store);
    assert_eq!(owned(&Catalog::open(&path).unwrap()), mirror);
}

#[test]
fn a_failed_deferred_write_is_resynchronized_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.sqlite");
    let (mut c, mut store) = Catalog::open_deferred(&path).unwrap();
    register(&mut c, Some("m"), "file:/m.gguf", None).unwrap();
    for w in c.take_writes() {
        store.apply(&w).unwrap();
    }
    let before = owned(&c);
    // SQLite integers are i64: this size cannot be stored.
    let huge = Copy {
        size_bytes: Some(u64::MAX),
        ..copy("n1", Some(&digest_a()), true)
    };
    c.record_copy("m", huge).unwrap();
    assert_ne!(owned(&c), before, "the mirror changed at once");
    let failed = c
        .take_writes()
        .iter()
        .map(|w| store.apply(w))
        .any(|r| r.is_err());
    assert!(failed);
    c.resync(store.load().unwrap(), &[]);
    assert_eq!(owned(&c), before, "back to what the store holds");
}
