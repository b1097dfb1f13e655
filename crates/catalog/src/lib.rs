//! orchestratord's model catalog (API.md §9): the records, kept in SQLite and mirrored in memory,
//! and the rules for registering, resolving, recording copies and adopting reported models.
//!
//! Reads are served from the mirror. Written through ([`Catalog::open`]), every write is one
//! SQLite transaction and the mirror changes only after the commit succeeds, so a failed write
//! leaves both as they were. Deferred ([`Catalog::open_deferred`]), the mirror changes at once and
//! each change is queued as a [`Write`] for the caller to commit, in order, on a [`Store`] it owns
//! elsewhere (orchestratord's store task): the owner of the rules never blocks on the disk. A
//! written-through `Catalog` is `Send` but not `Sync` (it owns a `rusqlite::Connection`).

// The public API returns `api::ErrorEnvelope` (144 bytes) as its error, as the daemons' HTTP layer
// expects; errors are the rare path, so boxing would only cost every caller a conversion.
#![allow(clippy::result_large_err)]

mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use api::catalog::{parse_digest, GgufInfo, ModelRecord, ModelState, RegisterModel};
use api::model_ref::{ModelRef, ModelRefError};
use api::{ErrorCode, ErrorEnvelope, ModelId, NodeId};

pub use store::{Store, StoreError, Write, SCHEMA_VERSION};

/// The outcome of a registration (§9.3): 201 or 200.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// A new entry: 201.
    Created(ModelRecord),
    /// An identical entry already existed: 200.
    Existing(ModelRecord),
}

impl Registered {
    pub fn record(&self) -> &ModelRecord {
        match self {
            Registered::Created(r) | Registered::Existing(r) => r,
        }
    }

    pub fn into_record(self) -> ModelRecord {
        match self {
            Registered::Created(r) | Registered::Existing(r) => r,
        }
    }
}

/// What a node told us about its copy of a model (pool report or finished load/verify).
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    pub node_id: NodeId,
    /// The digest the node computed, `sha256:<hex>` in any case.
    pub digest: Option<String>,
    pub size_bytes: Option<u64>,
    pub metadata: Option<GgufInfo>,
    /// A hash check of this copy just succeeded: the node joins `locations` and
    /// `last_verified_ms` becomes now. A report that merely repeats a digest passes `false`.
    pub verified: bool,
}

/// The result of [`Catalog::record_copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The copy agrees with the catalog; the record was updated if anything changed.
    Recorded,
    /// The copy's digest differs from the catalog's; nothing was changed.
    Mismatch { expected: String, actual: String },
}

/// The model catalog: a SQLite store and its in-memory mirror.
#[derive(Debug)]
pub struct Catalog {
    sink: Sink,
    models: BTreeMap<ModelId, ModelRecord>,
    /// normalized ref → the ids registered for it.
    refs: BTreeMap<String, BTreeSet<ModelId>>,
}

/// Where the catalog's writes go.
#[derive(Debug)]
enum Sink {
    /// Committed before the mirror changes.
    Through(store::Store),
    /// Queued for the owner of the [`Store`], in order.
    Deferred {
        path: std::path::PathBuf,
        pending: Vec<Write>,
    },
}

impl Catalog {
    /// Opens the catalog like [`Catalog::open`], but deferred: it returns the store separately and
    /// queues every change (see [`Catalog::take_writes`]) instead of writing it.
    pub fn open_deferred(path: &Path) -> Result<(Self, Store), StoreError> {
        let (store, records) = store::Store::open(path)?;
        let sink = Sink::Deferred {
            path: path.to_path_buf(),
            pending: Vec::new(),
        };
        Ok((Self::with(sink, records), store))
    }

    /// A deferred catalog over `records` read from another store (an HA leader's Postgres);
    /// `label` names that store where a path would be shown.
    pub fn deferred_from(records: Vec<ModelRecord>, label: &Path) -> Self {
        let sink = Sink::Deferred {
            path: label.to_path_buf(),
            pending: Vec::new(),
        };
        Self::with(sink, records)
    }

    /// The changes queued since the last call, in order (always empty when written through).
    pub fn take_writes(&mut self) -> Vec<Write> {
        match &mut self.sink {
            Sink::Through(_) => Vec::new(),
            Sink::Deferred { pending, .. } => std::mem::take(pending),
        }
    }

    /// Replaces the mirror with `records` (what the store holds, after a deferred write failed),
    /// then replays `since`: the changes queued after the store was read, not yet in `records`.
    pub fn resync(&mut self, records: Vec<ModelRecord>, since: &[Write]) {
        self.models.clear();
        self.refs.clear();
        for record in records {
            self.mirror_insert(record);
        }
        for w in since {
            match w {
                Write::Put(record) => self.mirror_insert(record.clone()),
                Write::Delete(id) => {
                    self.mirror_remove(id);
                }
            }
        }
    }

    /// Opens (creating it and its parent directories if needed) the catalog database at `path`,
    /// migrates its schema to [`SCHEMA_VERSION`] and loads every record. A database from a newer
    /// build, another program's database or a corrupt file is an error, never a silent reset.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let (store, records) = store::Store::open(path)?;
        Ok(Self::with(Sink::Through(store), records))
    }

    /// A catalog that lives only as long as this value (tests, `--check-config`).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let (store, records) = store::Store::open_in_memory()?;
        Ok(Self::with(Sink::Through(store), records))
    }

    fn with(sink: Sink, records: Vec<ModelRecord>) -> Self {
        let mut catalog = Self {
            sink,
            models: BTreeMap::new(),
            refs: BTreeMap::new(),
        };
        for record in records {
            catalog.mirror_insert(record);
        }
        catalog
    }

    /// The database path (`:memory:` for an in-memory catalog).
    pub fn path(&self) -> &Path {
        match &self.sink {
            Sink::Through(store) => store.path(),
            Sink::Deferred { path, .. } => path,
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModelRecord> {
        self.models.get(id)
    }

    /// Every record, sorted by id.
    pub fn list(&self) -> Vec<&ModelRecord> {
        self.models.values().collect()
    }

    /// The record for an exactly matching normalized ref; with several ids for one ref, the
    /// smallest id.
    pub fn by_ref(&self, normalized_ref: &str) -> Option<&ModelRecord> {
        let id = self.refs.get(normalized_ref)?.iter().next()?;
        self.models.get(id)
    }

    /// `POST /v2/catalog/models` (§9.3). Checks `id`, then `ref` (grammar, then `allowed_schemes`),
    /// then `digest`. The id defaults to the ref's derived id (§9.1). Same id, same ref and the
    /// same digest (or none given) → `Existing`; same id with another ref or digest → `CONFLICT`.
    /// Bad input changes nothing.
    pub fn register(
        &mut self,
        req: &RegisterModel,
        allowed_schemes: &[String],
    ) -> Result<Registered, ErrorEnvelope> {
        let given_id = req.id.clone();
        let mref = parse_ref(&req.model_ref, Some(allowed_schemes))?;
        let digest = req
            .digest
            .as_deref()
            .map(|d| parse_digest(d).map_err(|m| ErrorEnvelope::invalid("digest", m)))
            .transpose()?;
        let id = match given_id {
            Some(id) => id,
            None => derived_id(&mref)?,
        };
        let normalized = mref.to_string();
        if let Some(existing) = self.models.get(&id) {
            if existing.model_ref != normalized {
                return Err(ErrorEnvelope::new(
                    ErrorCode::Conflict,
                    format!(
                        "catalog id {id:?} is registered for ref {:?}, not {normalized:?}",
                        existing.model_ref
                    ),
                ));
            }
            if let Some(digest) = &digest {
                if existing.digest.as_ref() != Some(digest) {
                    let have = existing.digest.as_deref().unwrap_or("no digest");
                    return Err(ErrorEnvelope::new(
                        ErrorCode::Conflict,
                        format!("catalog id {id:?} is registered with {have}, not {digest}"),
                    ));
                }
            }
            return Ok(Registered::Existing(existing.clone()));
        }
        let record = new_record(id, normalized, digest);
        self.put(record.clone()).map_err(internal)?;
        tracing::info!(model_id = %record.id, model_ref = %record.model_ref, "catalog: model registered");
        Ok(Registered::Created(record))
    }

    /// Resolves a task's `model_ref` (§6.5, §9.1). Without `:` it is a catalog id (`None` if
    /// unknown). With `:` it is a ModelRef: parsed (INVALID_PARAMS field `ref` / UNTRUSTED_ARTIFACT),
    /// its scheme checked against `allowed_schemes`, then looked up by normalized ref; an unknown
    /// ref is registered as `Active` when `auto_register` (a clash of its derived id with another
    /// ref → CONFLICT), else `None`.
    pub fn resolve(
        &mut self,
        model_ref: &str,
        allowed_schemes: &[String],
        auto_register: bool,
    ) -> Result<Option<ModelRecord>, ErrorEnvelope> {
        if !model_ref.contains(':') {
            return Ok(self.models.get(model_ref).cloned());
        }
        let mref = parse_ref(model_ref, Some(allowed_schemes))?;
        let normalized = mref.to_string();
        if let Some(record) = self.by_ref(&normalized) {
            return Ok(Some(record.clone()));
        }
        if !auto_register {
            return Ok(None);
        }
        let req = RegisterModel {
            id: None,
            model_ref: normalized,
            digest: None,
        };
        Ok(Some(self.register(&req, allowed_schemes)?.into_record()))
    }

    /// `POST /v2/catalog/models/{id}/state`: 404 NOT_FOUND for an unknown id.
    pub fn set_state(&mut self, id: &str, state: ModelState) -> Result<ModelRecord, ErrorEnvelope> {
        let Some(current) = self.models.get(id) else {
            return Err(not_found(id));
        };
        if current.state == state {
            return Ok(current.clone());
        }
        let record = ModelRecord {
            state,
            ..current.clone()
        };
        self.put(record.clone()).map_err(internal)?;
        tracing::info!(model_id = %id, state = state.as_str(), "catalog: model state changed");
        Ok(record)
    }

    /// A node holds a copy (§9.2). Catalog digest null → the reported digest is recorded (the
    /// first one wins); catalog digest set and the reported one differs → `Mismatch`, nothing
    /// changes. `size_bytes` and `metadata` are taken when given, unless the catalog has a digest
    /// and the copy reports none (it may be another file). `verified` → the node joins
    /// `locations` and `last_verified_ms` = now. Nothing is written when nothing changes.
    pub fn record_copy(&mut self, id: &str, copy: Copy) -> Result<CopyOutcome, StoreError> {
        let Some(current) = self.models.get(id) else {
            return Err(StoreError::UnknownModel(id.to_string()));
        };
        let reported = copy
            .digest
            .as_deref()
            .map(|d| {
                parse_digest(d).map_err(|reason| StoreError::InvalidDigest {
                    id: id.to_string(),
                    digest: d.to_string(),
                    reason,
                })
            })
            .transpose()?;
        // Whether the copy is known to be the catalog's file (its size and metadata apply).
        let same_file = match (&current.digest, &reported) {
            (Some(expected), Some(actual)) if expected != actual => {
                tracing::warn!(model_id = %id, node_id = %copy.node_id, %expected, %actual, "catalog: copy digest mismatch");
                return Ok(CopyOutcome::Mismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
            (Some(_), None) => false,
            _ => true,
        };
        let mut record = current.clone();
        if record.digest.is_none() {
            record.digest = reported;
        }
        if same_file {
            if let Some(size) = copy.size_bytes {
                record.size_bytes = Some(size);
            }
            if let Some(metadata) = copy.metadata {
                record.metadata = Some(metadata);
            }
        }
        self.finish_copy(record, &copy.node_id, copy.verified)
    }

    fn finish_copy(
        &mut self,
        mut record: ModelRecord,
        node_id: &NodeId,
        verified: bool,
    ) -> Result<CopyOutcome, StoreError> {
        if verified {
            if let Err(pos) = record.locations.binary_search_by(|n| n.cmp(node_id)) {
                record.locations.insert(pos, node_id.clone());
            }
            record.last_verified_ms = Some(now_ms());
        }
        if self.models.get(&record.id) != Some(&record) {
            self.put(record)?;
        }
        Ok(CopyOutcome::Recorded)
    }

    /// The node no longer holds a verified copy. Not listed → nothing to do.
    pub fn remove_location(&mut self, id: &str, node_id: &str) -> Result<(), StoreError> {
        let Some(current) = self.models.get(id) else {
            return Err(StoreError::UnknownModel(id.to_string()));
        };
        if !current.locations.iter().any(|n| n.as_str() == node_id) {
            return Ok(());
        }
        let mut record = current.clone();
        record.locations.retain(|n| n.as_str() != node_id);
        self.put(record)
    }

    /// Registers a model that a pool reported and the catalog does not know (§9.2): an unknown id
    /// becomes an `Active` record with that ref and digest; a known id with the same ref is
    /// returned as it is; a known id with another ref → CONFLICT naming both refs. The scheme is
    /// not checked against `allowed_schemes`: the pool's operator configured the model locally.
    pub fn adopt_reported(
        &mut self,
        id: &str,
        normalized_ref: &str,
        digest: Option<&str>,
    ) -> Result<ModelRecord, ErrorEnvelope> {
        let id = parse_id(id)?;
        let normalized = parse_ref(normalized_ref, None)?.to_string();
        let digest = digest
            .map(|d| parse_digest(d).map_err(|m| ErrorEnvelope::invalid("digest", m)))
            .transpose()?;
        if let Some(existing) = self.models.get(&id) {
            if existing.model_ref == normalized {
                return Ok(existing.clone());
            }
            return Err(ErrorEnvelope::new(
                ErrorCode::Conflict,
                format!("model id {id:?} is reported with ref {normalized:?}, but the catalog has it for ref {:?}", existing.model_ref),
            ));
        }
        let record = new_record(id, normalized, digest);
        self.put(record.clone()).map_err(internal)?;
        tracing::info!(model_id = %record.id, model_ref = %record.model_ref, "catalog: reported model adopted");
        Ok(record)
    }

    /// Removes the entry; `None` if there was none.
    pub fn delete(&mut self, id: &str) -> Result<Option<ModelRecord>, StoreError> {
        if !self.models.contains_key(id) {
            return Ok(None);
        }
        self.write(Write::Delete(id.to_string()))?;
        let removed = self.mirror_remove(id);
        tracing::info!(model_id = %id, "catalog: model deleted");
        Ok(removed)
    }

    /// Writes the record, then (only after the commit) updates the mirror.
    fn put(&mut self, record: ModelRecord) -> Result<(), StoreError> {
        match &mut self.sink {
            Sink::Through(store) => store.put(&record)?,
            Sink::Deferred { pending, .. } => pending.push(Write::Put(record.clone())),
        }
        self.mirror_insert(record);
        Ok(())
    }

    fn write(&mut self, w: Write) -> Result<(), StoreError> {
        match &mut self.sink {
            Sink::Through(store) => store.apply(&w),
            Sink::Deferred { pending, .. } => {
                pending.push(w);
                Ok(())
            }
        }
    }

    fn mirror_insert(&mut self, record: ModelRecord) {
        self.mirror_remove(record.id.as_str());
        self.refs
            .entry(record.model_ref.clone())
            .or_default()
            .insert(record.id.clone());
        self.models.insert(record.id.clone(), record);
    }

    fn mirror_remove(&mut self, id: &str) -> Option<ModelRecord> {
        let old = self.models.remove(id)?;
        if let Some(ids) = self.refs.get_mut(&old.model_ref) {
            ids.remove(id);
            if ids.is_empty() {
                self.refs.remove(&old.model_ref);
            }
        }
        Some(old)
    }
}

/// A store failure as an API error: NOT_FOUND for an unknown model, INVALID_PARAMS for a bad
/// reported digest, else INTERNAL without internals in the message (log the `StoreError`).
impl From<StoreError> for ErrorEnvelope {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownModel(id) => not_found(&id),
            StoreError::InvalidDigest { reason, .. } => ErrorEnvelope::invalid("digest", reason),
            _ => ErrorEnvelope::new(
                ErrorCode::Internal,
                "the model catalog could not be updated",
            ),
        }
    }
}

fn internal(e: StoreError) -> ErrorEnvelope {
    tracing::error!(error = %e, "catalog: write failed");
    e.into()
}

fn not_found(id: &str) -> ErrorEnvelope {
    ErrorEnvelope::new(ErrorCode::NotFound, format!("catalog has no model {id:?}"))
}

fn parse_id(id: &str) -> Result<ModelId, ErrorEnvelope> {
    id.parse::<ModelId>()
        .map_err(|e| ErrorEnvelope::invalid("id", e.0))
}

/// Parses a ModelRef; with `allowed_schemes`, its scheme must be listed.
fn parse_ref(s: &str, allowed_schemes: Option<&[String]>) -> Result<ModelRef, ErrorEnvelope> {
    let mref = ModelRef::parse(s).map_err(|e| match e {
        ModelRefError::Invalid(_) => ErrorEnvelope::invalid("ref", e.to_string()),
        ModelRefError::Untrusted(_) => {
            ErrorEnvelope::new(ErrorCode::UntrustedArtifact, e.to_string())
        }
    })?;
    if let Some(allowed) = allowed_schemes {
        let scheme = mref.scheme();
        if !allowed.iter().any(|a| a == scheme) {
            return Err(ErrorEnvelope::new(
                ErrorCode::UntrustedArtifact,
                format!(
                    "model ref scheme {scheme:?} is not in catalog.allowed_schemes {allowed:?}"
                ),
            ));
        }
    }
    Ok(mref)
}

/// The §9.1 default id, which must itself be a valid model id.
fn derived_id(mref: &ModelRef) -> Result<ModelId, ErrorEnvelope> {
    let id = mref.default_id();
    id.parse().map_err(|_| {
        ErrorEnvelope::invalid(
            "ref",
            format!("the ref's file name gives no valid model id ({id:?}); give an id"),
        )
    })
}

fn new_record(id: ModelId, model_ref: String, digest: Option<String>) -> ModelRecord {
    ModelRecord {
        id,
        model_ref,
        digest,
        size_bytes: None,
        state: ModelState::Active,
        last_verified_ms: None,
        locations: Vec::new(),
        metadata: None,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
