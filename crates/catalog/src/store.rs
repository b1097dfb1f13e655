//! The SQLite side of the catalog: opening, schema versioning and migration, loading every row,
//! and one transaction per write. Knows nothing of the catalog's rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::catalog::{ModelRecord, ModelState};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

/// The schema version this build writes and understands (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of a catalog database ("LORC"), so that another program's SQLite file
/// is refused instead of being taken for a catalog.
pub(crate) const APPLICATION_ID: i64 = 0x4c4f_5243;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`. Each runs, together with the
/// `user_version` bump, inside one transaction: a failed migration leaves the file as it was.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE models (
         id               TEXT PRIMARY KEY NOT NULL,
         ref              TEXT NOT NULL,
         digest           TEXT,
         size_bytes       INTEGER CHECK (size_bytes IS NULL OR size_bytes >= 0),
         state            TEXT NOT NULL CHECK (state IN ('Active', 'Retired')),
         last_verified_ms INTEGER CHECK (last_verified_ms IS NULL OR last_verified_ms >= 0),
         metadata         TEXT
     ) STRICT;
     CREATE INDEX models_by_ref ON models(ref);
     CREATE TABLE locations (
         model_id TEXT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
         node_id  TEXT NOT NULL,
         PRIMARY KEY (model_id, node_id)
     ) STRICT, WITHOUT ROWID;",
];

/// A failure of the catalog's SQLite store. Every variant names the database path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog store {}: cannot create its directory: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Opening failed, or the file is not a (readable) SQLite database.
    #[error("catalog store {}: cannot open: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file was written by a newer build; it is never downgraded.
    #[error(
        "catalog store {}: schema version {found} is newer than this build supports ({supported}); refusing to open it (no downgrade)",
        .path.display()
    )]
    FutureSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// A SQLite file that is not a llama-orch catalog.
    #[error("catalog store {}: not a llama-orch catalog database: {reason}", .path.display())]
    Foreign { path: PathBuf, reason: String },
    #[error("catalog store {}: migration to schema version {version} failed: {source}", .path.display())]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("catalog store {}: cannot load the catalog: {source}", .path.display())]
    Load {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A stored row that does not make a valid record.
    #[error("catalog store {}: bad row for model {id:?}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        id: String,
        reason: String,
    },
    /// A write failed; the transaction was rolled back and the catalog is unchanged.
    #[error("catalog store {}: writing model {id:?} failed: {source}", .path.display())]
    Write {
        path: PathBuf,
        id: String,
        source: rusqlite::Error,
    },
    /// The catalog has no model with this id.
    #[error("catalog has no model {0:?}")]
    UnknownModel(String),
    /// A node reported a digest that is not `sha256:<64 hex>`.
    #[error("digest {digest:?} reported for model {id:?}: {reason}")]
    InvalidDigest {
        id: String,
        digest: String,
        reason: String,
    },
}

/// One catalog change for the store: a record written (row and locations) or a model deleted.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Put(ModelRecord),
    Delete(String),
}

/// The SQLite store of a catalog, for a store task when the catalog runs deferred
/// ([`crate::Catalog::open_deferred`]).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<ModelRecord>), StoreError> {
        let path = path.to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, path)
    }

    pub(crate) fn open_in_memory() -> Result<(Self, Vec<ModelRecord>), StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn init(mut conn: Connection, path: PathBuf) -> Result<(Self, Vec<ModelRecord>), StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // The first read of the header: a file that is not SQLite fails here. A newer schema is
        // refused before anything (journal mode included) is written to the file.
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        check_version(&path, found)?;
        // WAL: readers never block the writer, and a commit appends to the log instead of
        // rewriting pages. synchronous=FULL (not NORMAL): with NORMAL a power loss may undo the
        // last commits, and the catalog must not forget a recorded digest ("first one wins", a
        // forgotten digest would let a different file become the first) or a registration it
        // answered 201 for. Catalog writes are rare (registrations, loads, verifications), so one
        // fsync per commit costs nothing that matters.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(path = %path.display(), journal_mode = %mode, "catalog store: WAL is not available; using the file system's journal mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        let records = load(&conn, &path)?;
        Ok((Self { conn, path }, records))
    }

    /// Writes `rec` (row and locations) in one transaction.
    pub(crate) fn put(&mut self, rec: &ModelRecord) -> Result<(), StoreError> {
        self.write(rec.id.as_str(), |tx| {
            let metadata = rec
                .metadata
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(conversion)?;
            tx.execute(
                "INSERT INTO models (id, ref, digest, size_bytes, state, last_verified_ms, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET ref = excluded.ref, digest = excluded.digest,
                     size_bytes = excluded.size_bytes, state = excluded.state,
                     last_verified_ms = excluded.last_verified_ms, metadata = excluded.metadata",
                params![
                    rec.id.as_str(),
                    rec.model_ref,
                    rec.digest,
                    to_i64(rec.size_bytes)?,
                    rec.state.as_str(),
                    to_i64(rec.last_verified_ms)?,
                    metadata
                ],
            )?;
            tx.execute(
                "DELETE FROM locations WHERE model_id = ?1",
                params![rec.id.as_str()],
            )?;
            let mut insert =
                tx.prepare_cached("INSERT INTO locations (model_id, node_id) VALUES (?1, ?2)")?;
            for node in &rec.locations {
                insert.execute(params![rec.id.as_str(), node.as_str()])?;
            }
            Ok(())
        })
    }

    /// Commits one change in its own transaction.
    pub fn apply(&mut self, w: &Write) -> Result<(), StoreError> {
        match w {
            Write::Put(rec) => self.put(rec),
            Write::Delete(id) => self.delete(id),
        }
    }

    /// Every record as stored (to resynchronize a mirror after a failed write).
    pub fn load(&self) -> Result<Vec<ModelRecord>, StoreError> {
        load(&self.conn, &self.path)
    }

    /// Deletes the model and its locations in one transaction.
    pub(crate) fn delete(&mut self, id: &str) -> Result<(), StoreError> {
        self.write(id, |tx| {
            tx.execute("DELETE FROM locations WHERE model_id = ?1", params![id])?;
            tx.execute("DELETE FROM models WHERE id = ?1", params![id])?;
            Ok(())
        })
    }

    fn write(
        &mut self,
        id: &str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            f(&tx)?;
            tx.commit()
        })();
        result.map_err(|source| StoreError::Write {
            path: self.path.clone(),
            id: id.to_string(),
            source,
        })
    }
}

fn conversion(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn to_i64(v: Option<u64>) -> rusqlite::Result<Option<i64>> {
    v.map(i64::try_from).transpose().map_err(conversion)
}

fn check_version(path: &Path, found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::FutureSchema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            reason: format!("negative schema version {found}"),
        });
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one immediate transaction (the version is read again
/// under the write lock, so two processes opening one file cannot both migrate it).
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    check_version(path, found)?;
    if found == SCHEMA_VERSION {
        let app: i64 = tx
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(open_err)?;
        if app != APPLICATION_ID {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                reason: format!("application_id is {app:#x}"),
            });
        }
        return tx.commit().map_err(open_err);
    }
    if found == 0 {
        // A fresh file has no schema at all; tables without a version belong to someone else.
        let other: Option<String> = tx
            .query_row("SELECT name FROM sqlite_schema LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(open_err)?;
        if let Some(name) = other {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
                reason: format!("unversioned database with object {name:?}"),
            });
        }
    }
    for version in found + 1..=SCHEMA_VERSION {
        let step = usize::try_from(version - 1)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
            .copied()
            .unwrap_or_default();
        let migrate_err = |source| StoreError::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        tx.execute_batch(step).map_err(migrate_err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_err)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(|source| StoreError::Migrate {
            path: path.to_path_buf(),
            version: SCHEMA_VERSION,
            source,
        })?;
    tx.commit().map_err(|source| StoreError::Migrate {
        path: path.to_path_buf(),
        version: SCHEMA_VERSION,
        source,
    })?;
    tracing::info!(path = %path.display(), from = found, to = SCHEMA_VERSION, "catalog store: schema migrated");
    Ok(())
}

fn load(conn: &Connection, path: &Path) -> Result<Vec<ModelRecord>, StoreError> {
    let load_err = |source| StoreError::Load {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |id: &str, reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        id: id.to_string(),
        reason,
    };
    type Row = (
        String,
        String,
        Option<String>,
        Option<i64>,
        String,
        Option<i64>,
        Option<String>,
    );
    let rows: Vec<Row> = conn
        .prepare("SELECT id, ref, digest, size_bytes, state, last_verified_ms, metadata FROM models ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
                .collect()
        })
        .map_err(load_err)?;
    let mut records = BTreeMap::new();
    for (id, model_ref, digest, size_bytes, state, last_verified_ms, metadata) in rows {
        let to_u64 = |v: Option<i64>, what: &str| {
            v.map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt(&id, format!("negative {what}")))
        };
        let record = ModelRecord {
            size_bytes: to_u64(size_bytes, "size_bytes")?,
            last_verified_ms: to_u64(last_verified_ms, "last_verified_ms")?,
            state: ModelState::parse(&state)
                .ok_or_else(|| corrupt(&id, format!("unknown state {state:?}")))?,
            metadata: metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| corrupt(&id, format!("metadata: {e}")))?,
            id: id
                .parse()
                .map_err(|e: api::IdError| corrupt(&id, format!("id: {e}")))?,
            model_ref,
            digest,
            locations: Vec::new(),
        };
        records.insert(id, record);
    }
    let locations: Vec<(String, String)> = conn
        .prepare("SELECT model_id, node_id FROM locations ORDER BY model_id, node_id")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(load_err)?;
    for (model_id, node_id) in locations {
        let Some(record) = records.get_mut(&model_id) else {
            return Err(corrupt(
                &model_id,
                format!("location {node_id:?} of a model that does not exist"),
            ));
        };
        let node_id = node_id
            .parse()
            .map_err(|e: api::IdError| corrupt(&model_id, format!("location: {e}")))?;
        record.locations.push(node_id);
    }
    Ok(records.into_values().collect())
}
