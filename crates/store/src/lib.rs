//! # broadcast-store
//!
//! Persistence for Broadcast: one [`Store`] API over two sqlx backends, SQLite (the embedded
//! default) and PostgreSQL (for several nodes). The backend is chosen once, from the URL
//! scheme, by [`Store::connect`].
//!
//! Every method is written once. The `dispatch!` macro compiles its body once per backend,
//! with the concrete pool type in scope, so the SQL text is shared (SQLite accepts the
//! `$1` placeholders PostgreSQL uses) and only the few statements that must differ
//! (`FOR UPDATE SKIP LOCKED`, `BEGIN IMMEDIATE`) do. The conformance suite in
//! `tests/conformance.rs` runs the same tests against both.
//!
//! ```no_run
//! # async fn demo() -> Result<(), broadcast_store::StoreError> {
//! let store = broadcast_store::Store::connect("sqlite://broadcast.db").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod rows;

use broadcast_core::{
    Action, Advisory, AdvisoryContent, AdvisoryId, Analyst, AnalystId, Assessment, Bulletin, BulletinContent,
    BulletinId, BulletinState, ChannelKind, Contact, ContactId, Delivery, DeliveryId, DeliveryState,
    Endpoint, EndpointFormat, EndpointId, KevEntry, OrgId, Organisation, Role, ThreatLevel, Tlp,
    TransitionError,
};
use chrono::{DateTime, Datelike, Utc};
use rows::*;
use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, SqlSafeStr, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong in the store. Each variant names the thing concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} `{id}` not found")]
    NotFound { kind: &'static str, id: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn not_found(kind: &'static str, id: impl ToString) -> StoreError {
    StoreError::NotFound { kind, id: id.to_string() }
}

/// Turns unique-constraint violations into a readable conflict.
fn unique_as_conflict(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(err),
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store types serialise to JSON")
}

/// A fresh random id suffix. UUIDv7 keeps ids roughly sortable by creation time.
fn suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Times are stored with millisecond precision on both backends, so values read back
/// compare equal to what was written.
pub fn db_time(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    let ms = t.timestamp_subsec_millis();
    t.with_nanosecond(ms * 1_000_000).unwrap_or(t)
}

/// Which backend a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The one persistence API. Cheap to clone (it holds a connection pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// On SQLite, keeps this file's writer open while the store is (see [`sqlite_writer`]).
    writer: Option<Arc<SqliteWriter>>,
}

/// Backend-specific pieces the shared method bodies need.
trait Pool {
    type Db: sqlx::Database;
    /// `FOR UPDATE SKIP LOCKED` where the backend has several writers.
    const SKIP_LOCKED: &'static str;
    /// A transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so two writers queue on `busy_timeout` instead of failing.
    async fn begin_write(&self) -> Result<WriteTx<Self::Db>, sqlx::Error>;
}

/// A write transaction. On SQLite it also holds this process's turn to write to that
/// database file (see [`SqliteWriter`]).
struct WriteTx<DB: sqlx::Database> {
    tx: Transaction<'static, DB>,
    _turn: Option<tokio::sync::OwnedMutexGuard<Option<sqlx::SqliteConnection>>>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// This process's writer for one SQLite database file. Its lock is the process's turn to
/// write: writers of one process queue here, in order and without delay, rather than on
/// SQLite's busy handler, which sleeps 1, 2, 5, 10 … ms between tries (the delivery worker's
/// claims and attempt records were meeting there hundreds of times a second). Writers in
/// other processes still meet on `busy_timeout`.
///
/// It also holds one connection, kept out of the pool, on which the hot write commands run
/// ([`sqlite_command`]): a connection's page cache is emptied whenever another connection has
/// written to the file since its last transaction, so writes spread over the pool re-read
/// their index pages each time, and a connection handed back to the pool is only usable again
/// once a task spawned for that has run. One kept connection has neither cost.
struct SqliteWriter {
    conn: Arc<tokio::sync::Mutex<Option<sqlx::SqliteConnection>>>,
    options: SqliteConnectOptions,
}

/// The writer of `pool`'s database file, made on first use and shared by every store of
/// this process open on that file (each [`Store`] holds it, so it lives as long as they do).
fn sqlite_writer(pool: &SqlitePool) -> Arc<SqliteWriter> {
    type Writers = HashMap<std::path::PathBuf, std::sync::Weak<SqliteWriter>>;
    static WRITERS: std::sync::LazyLock<std::sync::Mutex<Writers>> =
        std::sync::LazyLock::new(Default::default);
    let file = pool.connect_options().get_filename().to_path_buf();
    let mut writers = WRITERS.lock().expect("writer map lock");
    if let Some(w) = writers.get(&file).and_then(std::sync::Weak::upgrade) {
        return w;
    }
    let writer = Arc::new(SqliteWriter { conn: Arc::default(), options: (*pool.connect_options()).clone() });
    writers.retain(|_, w| w.strong_count() > 0);
    writers.insert(file, Arc::downgrade(&writer));
    writer
}

/// Runs one write transaction on SQLite as a single command — `BEGIN IMMEDIATE; …; COMMIT`
/// sent to the database thread at once — on the file's kept writer connection, and returns
/// the rows its statements return. For the delivery worker's hot paths: each statement sent
/// separately is a hand-over to SQLite's thread and back, which costs more than the statement
/// itself. The command runs in its own task, so a caller that stops waiting cannot leave it
/// half done; on an error it is rolled back (or, if that fails too, the connection is
/// dropped and the next command opens a new one).
async fn sqlite_command(
    pool: &SqlitePool,
    build: impl FnOnce(&mut QueryBuilder<sqlx::Sqlite>) + Send + 'static,
) -> Result<Vec<sqlx::sqlite::SqliteRow>> {
    let writer = sqlite_writer(pool);
    let task = tokio::spawn(async move {
        let mut held = writer.conn.clone().lock_owned().await;
        let conn = match held.as_mut() {
            Some(conn) => conn,
            None => held.insert(sqlx::ConnectOptions::connect(&writer.options).await?),
        };
        let mut qb = QueryBuilder::new("BEGIN IMMEDIATE; ");
        build(&mut qb);
        qb.push("; COMMIT");
        let result = qb.build().fetch_all(&mut *conn).await;
        if result.is_err() && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
            // Not in a transaction any more (the error ended it) or the connection is broken:
            // only in the second case does it matter, and a new connection is right for both.
            *held = None;
        }
        Ok::<_, StoreError>(result?)
    });
    task.await.map_err(|_| StoreError::Database(sqlx::Error::WorkerCrashed))?
}

impl Pool for SqlitePool {
    type Db = sqlx::Sqlite;
    const SKIP_LOCKED: &'static str = "";
    async fn begin_write(&self) -> Result<WriteTx<sqlx::Sqlite>, sqlx::Error> {
        let turn = sqlite_writer(self).conn.clone().lock_owned().await;
        Ok(WriteTx { tx: self.begin_with("BEGIN IMMEDIATE").await?, _turn: Some(turn) })
    }
}

impl Pool for PgPool {
    type Db = sqlx::Postgres;
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    async fn begin_write(&self) -> Result<WriteTx<sqlx::Postgres>, sqlx::Error> {
        Ok(WriteTx { tx: self.begin().await?, _turn: None })
    }
}

/// Runs `$body` with `$pool` bound to the concrete pool of the store's backend. The body is
/// compiled once per backend.
macro_rules! dispatch {
    ($self:ident, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Appends a bulletin history entry inside the current transaction.
macro_rules! insert_event {
    ($tx:expr, $bulletin:expr, $action:expr, $actor:expr, $from:expr, $to:expr, $comment:expr, $at:expr) => {
        sqlx::query(
            "INSERT INTO bulletin_events (bulletin_id, action, actor_id, from_state, to_state, comment, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind($bulletin.as_str())
        .bind($action)
        .bind($actor.as_str())
        .bind($from.map(|s: BulletinState| s.as_str()))
        .bind($to.as_str())
        .bind($comment)
        .bind($at)
        .execute(&mut *$tx)
        .await
    };
}

/// Appends an entry to the hash-chained audit log inside the current transaction. The
/// `audit_head` row is updated first, which locks it: concurrent appenders queue, so
/// sequence numbers have no gaps and each entry chains to the one before.
macro_rules! audit {
    ($tx:expr, $actor:expr, $action:expr, $subject:expr, $details:expr, $at:expr) => {{
        let (seq, prev): (i64, String) =
            sqlx::query_as("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
                .fetch_one(&mut *$tx)
                .await?;
        let details: String = $details;
        let entry = AuditEntry {
            seq,
            at: $at,
            actor: $actor.to_string(),
            action: $action.to_string(),
            subject: $subject.to_string(),
            details,
            prev_hash: prev,
            hash: String::new(),
        };
        let hash = entry.compute_hash();
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(seq)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.subject)
        .bind(&entry.details)
        .bind(&entry.prev_hash)
        .bind(&hash)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&hash).execute(&mut *$tx).await?;
    }};
}

/// Sets one column of an organisation (found by id or name) and audits it in the same
/// transaction; evaluates to the organisation as it now is.
macro_rules! update_organisation {
    ($self:ident, $key:expr, $column:literal, $value:expr, $actor:expr, $action:literal, $details:expr, $now:expr) => {{
        let org = $self.get_organisation($key).await?;
        let now = db_time($now);
        dispatch!($self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(concat!("UPDATE organisations SET ", $column, " = $1 WHERE id = $2"))
                .bind($value).bind(org.id.as_str()).execute(&mut *tx).await?;
            audit!(tx, $actor, $action, org.id, $details, now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        $self.get_organisation(org.id.as_str()).await
    }};
}

/// Reads the subscribers and writes a published bulletin's outbox rows, inside the
/// publishing transaction. Evaluates to the number of rows written.
macro_rules! fan_out {
    ($tx:expr, $b:expr, $now:expr) => {{
        let orgs: Vec<OrgRow> =
            sqlx::query_as("SELECT * FROM organisations ORDER BY id").fetch_all(&mut *$tx).await?;
        let contacts: Vec<(String, String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT id, org_id, email, unsubscribed, suppressed_reason FROM contacts ORDER BY id",
        )
        .fetch_all(&mut *$tx)
        .await?;
        let endpoints: Vec<(String, String, String, bool)> =
            sqlx::query_as("SELECT id, org_id, url, enabled FROM endpoints ORDER BY id")
                .fetch_all(&mut *$tx)
                .await?;
        let rows = plan_fan_out($b, orgs, &contacts, &endpoints, $now)?;
        InsertOutbox::insert_outbox(&mut *$tx, $b.id.as_str(), &rows, $now).await?;
        rows.len()
    }};
}

fn migrator(files: &[(&'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .enumerate()
        .map(|(i, (desc, sql))| {
            Migration::new(i as i64 + 1, (*desc).into(), MigrationType::Simple, sql.into_sql_str(), false)
        })
        .collect();
    Migrator::with_migrations(migrations)
}

const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    ("overrides and audit", include_str!("../migrations/sqlite/0002_overrides_audit.sql")),
    ("endpoint rotation and format", include_str!("../migrations/sqlite/0003_endpoint_rotation_format.sql")),
    ("organisation interests", include_str!("../migrations/sqlite/0004_org_interests.sql")),
    ("contact bounces", include_str!("../migrations/sqlite/0005_contact_bounces.sql")),
    ("claim indexes", include_str!("../migrations/sqlite/0006_claim_indexes.sql")),
    ("endpoint health", include_str!("../migrations/sqlite/0007_endpoint_health.sql")),
    ("digests", include_str!("../migrations/sqlite/0008_digests.sql")),
    ("accounts", include_str!("../migrations/sqlite/0009_accounts.sql")),
    ("kev", include_str!("../migrations/sqlite/0010_kev.sql")),
    ("feed cursor", include_str!("../migrations/sqlite/0011_feed_cursor.sql")),
    ("feed leases", include_str!("../migrations/sqlite/0012_feed_leases.sql")),
    ("incident tokens", include_str!("../migrations/sqlite/0013_incident_tokens.sql")),
    ("issues", include_str!("../migrations/sqlite/0014_issues.sql")),
    ("disable notice", include_str!("../migrations/sqlite/0015_disable_notice.sql")),
];
const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("../migrations/postgres/0001_initial.sql")),
    ("overrides and audit", include_str!("../migrations/postgres/0002_overrides_audit.sql")),
    (
        "endpoint rotation and format",
        include_str!("../migrations/postgres/0003_endpoint_rotation_format.sql"),
    ),
    ("organisation interests", include_str!("../migrations/postgres/0004_org_interests.sql")),
    ("contact bounces", include_str!("../migrations/postgres/0005_contact_bounces.sql")),
    ("claim indexes", include_str!("../migrations/postgres/0006_claim_indexes.sql")),
    ("endpoint health", include_str!("../migrations/postgres/0007_endpoint_health.sql")),
    ("digests", include_str!("../migrations/postgres/0008_digests.sql")),
    ("accounts", include_str!("../migrations/postgres/0009_accounts.sql")),
    ("kev", include_str!("../migrations/postgres/0010_kev.sql")),
    ("feed cursor", include_str!("../migrations/postgres/0011_feed_cursor.sql")),
    ("feed leases", include_str!("../migrations/postgres/0012_feed_leases.sql")),
    ("incident tokens", include_str!("../migrations/postgres/0013_incident_tokens.sql")),
    ("issues", include_str!("../migrations/postgres/0014_issues.sql")),
    ("disable notice", include_str!("../migrations/postgres/0015_disable_notice.sql")),
];

/// Whether a candidate list includes advisories triage found irrelevant.
#[derive(Clone, Debug, Default)]
pub struct CandidateFilter {
    pub include_irrelevant: bool,
    pub limit: Option<i64>,
}

/// An advisory with triage's verdict on its latest revision.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub advisory: Advisory,
    /// Triage's verdict, with an analyst's override applied.
    pub assessment: Assessment,
    /// The override, if an analyst corrected this revision's verdict.
    #[serde(rename = "override")]
    pub override_info: Option<OverrideInfo>,
}

/// What storing an advisory did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    New,
    Revised,
    Unchanged,
}

/// What applying KEV entries did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KevApplied {
    /// Listings not seen before.
    pub new_entries: usize,
    /// Listings CISA changed (due date, ransomware use).
    pub changed_entries: usize,
    /// Advisories given a new revision by a listing.
    pub advisories: Vec<AdvisoryId>,
}

fn kev_listing(
    (added, due, ransomware): (String, Option<String>, bool),
) -> Result<broadcast_core::KevListing> {
    let date = |s: &str| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|e| StoreError::Corrupt(format!("kev_entries date `{s}`: {e}")))
    };
    Ok(broadcast_core::KevListing {
        date_added: date(&added)?,
        due_date: due.as_deref().map(date).transpose()?,
        ransomware,
    })
}

/// The result of [`Store::upsert_advisory`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upserted {
    pub id: AdvisoryId,
    pub revision: i32,
    pub change: Change,
}

/// One stored revision of an advisory.
#[derive(Clone, Debug, Serialize)]
pub struct Revision {
    pub revision: i32,
    pub collected_at: DateTime<Utc>,
    pub content: AdvisoryContent,
}

/// Collection state and health of one feed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct FeedState {
    pub feed_id: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: i32,
    pub items_seen: i64,
    /// Where an incremental feed got to (feed-specific text).
    pub cursor: Option<String>,
}

/// A completed transition and what it did to the outbox.
#[derive(Clone, Debug, Serialize)]
pub struct Transitioned {
    pub bulletin: Bulletin,
    /// Outbox rows written by a publish (all states, including suppressed).
    pub deliveries_created: usize,
    /// Pending rows cancelled by a withdrawal.
    pub deliveries_cancelled: u64,
}

/// A bulletin's history entry.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct BulletinEvent {
    pub action: String,
    pub actor_id: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
}

/// One audit-log entry. `hash` = SHA-256 over the previous hash and every field, so editing
/// or deleting any entry breaks the chain from there on.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// Analyst id, or `system`.
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// JSON.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    pub fn compute_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.prev_hash.as_str(),
            &self.seq.to_string(),
            &self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            &self.actor,
            &self.action,
            &self.subject,
            &self.details,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The result of checking the audit chain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditCheck {
    pub entries: i64,
    /// The first entry that does not check out, and why.
    pub broken: Option<(i64, String)>,
}

/// Counts for `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    pub deliveries: BTreeMap<String, i64>,
    pub bulletins: BTreeMap<String, i64>,
    pub advisories: i64,
    pub relevant_candidates: i64,
}

/// An analyst's correction of triage's verdict on one revision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OverrideInfo {
    pub relevant: Option<bool>,
    pub threat_level: Option<ThreatLevel>,
    pub reason: String,
    pub analyst: String,
    pub at: DateTime<Utc>,
}

/// How one delivery attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed for now; try again at the given time.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
}

/// One attempt to deliver, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    /// Status line, SMTP reply or response excerpt.
    pub detail: String,
}

/// A recorded attempt, as read back.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub outcome: String,
    pub detail: String,
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing, WAL mode) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|_| StoreError::BadUrl(url.to_owned()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            // SQLite creates the file, not its folder.
            if let Some(dir) = opts.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::BadUrl(format!("{url} ({}: {e})", dir.display())))?;
            }
            // No ping before each use: a connection to a local file does not go stale, and on SQLite
            // a ping is a round trip to the connection's thread, as costly as a small query.
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .test_before_acquire(false)
                .connect_with(opts)
                .await?;
            let writer = sqlite_writer(&pool);
            Ok(Store { backend: Backend::Sqlite(pool), writer: Some(writer) })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl(url.to_owned()))?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            Ok(Store { backend: Backend::Postgres(pool), writer: None })
        } else {
            Err(StoreError::BadUrl(url.to_owned()))
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Applies the backend's migrations that have not run yet. Safe to call on every start.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(pool) => migrator(SQLITE_MIGRATIONS).run(pool).await?,
            Backend::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(writer) = &self.writer
            && let Some(conn) = writer.conn.lock().await.take()
        {
            // Another store on the same file opens a new one when it next writes.
            let _ = sqlx::Connection::close(conn).await;
        }
        dispatch!(self, pool => pool.close().await)
    }

    // ----- advisories -------------------------------------------------------------------

    /// Stores what a feed reported. The same `(source, external_id)` with the same content
    /// stores nothing; changed content becomes the next revision of the same advisory. The
    /// record stays its own issue (or keeps the one it is in); see [`Store::upsert_advisory_keyed`].
    pub async fn upsert_advisory(&self, content: &AdvisoryContent, now: DateTime<Utc>) -> Result<Upserted> {
        self.upsert_advisory_keyed(content, &[], now).await
    }

    /// [`Store::upsert_advisory`], joining the record to the issue its identity `keys`
    /// name (triage decides the keys: `broadcast_triage::issue::identity_keys`), and merging
    /// issues the keys show are one. Done in the same transaction as the revision.
    pub async fn upsert_advisory_keyed(
        &self,
        content: &AdvisoryContent,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<Upserted> {
        content.validate().map_err(|why| StoreError::Invalid { what: "advisory", why })?;
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // A CVE already in the KEV catalog marks the advisory as it arrives.
            let mut with_kev;
            let content = if content.kev.is_none() && !content.cves.is_empty() {
                let mut qb = QueryBuilder::new("SELECT date_added, due_date, ransomware FROM kev_entries WHERE cve IN (");
                let mut sep = qb.separated(", ");
                for c in &content.cves {
                    sep.push_bind(c.clone());
                }
                sep.push_unseparated(") ORDER BY date_added LIMIT 1");
                let row: Option<(String, Option<String>, bool)> = qb.build_query_as().fetch_optional(&mut *tx).await?;
                match row {
                    Some(r) => {
                        with_kev = content.clone();
                        with_kev.kev = Some(kev_listing(r)?);
                        &with_kev
                    }
                    None => content,
                }
            } else {
                content
            };
            let json = to_json(content);
            let existing: Option<(String, i32, String)> = sqlx::query_as(
                "SELECT id, revision, content FROM advisories WHERE source = $1 AND external_id = $2",
            )
            .bind(&content.source)
            .bind(&content.external_id)
            .fetch_optional(&mut *tx)
            .await?;
            let out = match existing {
                None => {
                    let id = AdvisoryId::from_suffix(&suffix());
                    sqlx::query(
                        "INSERT INTO advisories (id, source, external_id, revision, content, first_seen, last_changed)
                         VALUES ($1, $2, $3, 1, $4, $5, $5)",
                    )
                    .bind(id.as_str()).bind(&content.source).bind(&content.external_id).bind(&json).bind(now)
                    .execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO advisory_revisions (advisory_id, revision, content, collected_at) VALUES ($1, 1, $2, $3)")
                        .bind(id.as_str()).bind(&json).bind(now)
                        .execute(&mut *tx).await?;
                    for cve in &content.cves {
                        sqlx::query("INSERT INTO advisory_cves (cve, advisory_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                            .bind(cve).bind(id.as_str()).execute(&mut *tx).await?;
                    }
                    Upserted { id, revision: 1, change: Change::New }
                }
                Some((id, revision, old)) => {
                    let id = parse_id::<AdvisoryId>(&id)?;
                    if old == json {
                        Upserted { id, revision, change: Change::Unchanged }
                    } else {
                        let next = revision + 1;
                        sqlx::query("UPDATE advisories SET revision = $1, content = $2, last_changed = $3 WHERE id = $4")
                            .bind(next).bind(&json).bind(now).bind(id.as_str())
                            .execute(&mut *tx).await?;
                        sqlx::query("INSERT INTO advisory_revisions (advisory_id, revision, content, collected_at) VALUES ($1, $2, $3, $4)")
                            .bind(id.as_str()).bind(next).bind(&json).bind(now)
                            .execute(&mut *tx).await?;
                        sqlx::query("DELETE FROM advisory_cves WHERE advisory_id = $1").bind(id.as_str()).execute(&mut *tx).await?;
                        for cve in &content.cves {
                            sqlx::query("INSERT INTO advisory_cves (cve, advisory_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                                .bind(cve).bind(id.as_str()).execute(&mut *tx).await?;
                        }
                        Upserted { id, revision: next, change: Change::Revised }
                    }
                }
            };
            if out.change != Change::Unchanged {
                // Join the record to its issue (merging issues its keys show are one).
                let mut issues: Vec<String> = Vec::new();
                if !keys.is_empty() {
                    let mut qb = QueryBuilder::new("SELECT DISTINCT issue_id FROM issue_keys WHERE key IN (");
                    let mut sep = qb.separated(", ");
                    for k in keys {
                        sep.push_bind(k.clone());
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<(String,)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                    issues.extend(rows.into_iter().map(|(i,)| i));
                }
                let (current,): (Option<String>,) = sqlx::query_as("SELECT issue_id FROM advisories WHERE id = $1")
                    .bind(out.id.as_str()).fetch_one(&mut *tx).await?;
                issues.push(current.unwrap_or_else(|| out.id.to_string()));
                issues.sort();
                issues.dedup();
                let target = issues[0].clone();
                for other in &issues[1..] {
                    sqlx::query("UPDATE advisories SET issue_id = $1 WHERE issue_id = $2").bind(&target).bind(other).execute(&mut *tx).await?;
                    sqlx::query("UPDATE issue_keys SET issue_id = $1 WHERE issue_id = $2").bind(&target).bind(other).execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE advisories SET issue_id = $1 WHERE id = $2").bind(&target).bind(out.id.as_str()).execute(&mut *tx).await?;
                for k in keys {
                    sqlx::query("INSERT INTO issue_keys (key, issue_id) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET issue_id = excluded.issue_id")
                        .bind(k).bind(&target).execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Applies KEV catalog entries: each new or changed listing is remembered (advisories
    /// stored later get it as they arrive) and marks every advisory naming the CVE, as a new
    /// revision ("added to KEV") that triage assesses again. Unchanged listings cost nothing,
    /// so the catalog can be applied whole on every run.
    pub async fn apply_kev(&self, entries: &[KevEntry], now: DateTime<Utc>) -> Result<KevApplied> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let known: Vec<(String, String, Option<String>, bool)> =
                sqlx::query_as("SELECT cve, date_added, due_date, ransomware FROM kev_entries").fetch_all(&mut *tx).await?;
            let known: std::collections::HashMap<String, (String, Option<String>, bool)> =
                known.into_iter().map(|(c, a, d, r)| (c, (a, d, r))).collect();
            let mut out = KevApplied::default();
            for e in entries {
                let values = (
                    e.listing.date_added.to_string(),
                    e.listing.due_date.map(|d| d.to_string()),
                    e.listing.ransomware,
                );
                match known.get(&e.cve) {
                    Some(v) if *v == values => continue,
                    Some(_) => out.changed_entries += 1,
                    None => out.new_entries += 1,
                }
                sqlx::query(
                    "INSERT INTO kev_entries (cve, date_added, due_date, ransomware, vendor, product, name, first_seen)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (cve) DO UPDATE SET date_added = excluded.date_added, due_date = excluded.due_date,
                         ransomware = excluded.ransomware, vendor = excluded.vendor, product = excluded.product, name = excluded.name",
                )
                .bind(&e.cve).bind(&values.0).bind(&values.1).bind(values.2)
                .bind(&e.vendor).bind(&e.product).bind(&e.name).bind(now)
                .execute(&mut *tx).await?;
                let ids: Vec<(String,)> = sqlx::query_as("SELECT advisory_id FROM advisory_cves WHERE cve = $1 ORDER BY advisory_id")
                    .bind(&e.cve).fetch_all(&mut *tx).await?;
                for (id,) in ids {
                    let (revision, old): (i32, String) =
                        sqlx::query_as("SELECT revision, content FROM advisories WHERE id = $1").bind(&id).fetch_one(&mut *tx).await?;
                    let mut c: AdvisoryContent = serde_json::from_str(&old)
                        .map_err(|e| StoreError::Corrupt(format!("advisory {id}: {e}")))?;
                    // Of several listed CVEs the earliest listing stands; the same CVE's
                    // listing is replaced when CISA changes it (a due date moved).
                    if c.kev.as_ref().is_some_and(|k| *k == e.listing || k.date_added < e.listing.date_added) {
                        continue;
                    }
                    c.kev = Some(e.listing.clone());
                    let json = to_json(&c);
                    let next = revision + 1;
                    sqlx::query("UPDATE advisories SET revision = $1, content = $2, last_changed = $3 WHERE id = $4")
                        .bind(next).bind(&json).bind(now).bind(&id).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO advisory_revisions (advisory_id, revision, content, collected_at) VALUES ($1, $2, $3, $4)")
                        .bind(&id).bind(next).bind(&json).bind(now).execute(&mut *tx).await?;
                    out.advisories.push(parse_id(&id)?);
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Every record of the issue this advisory belongs to (itself included), oldest first.
    pub async fn issue_members(&self, id: &AdvisoryId) -> Result<Vec<Advisory>> {
        dispatch!(self, pool => {
            let rows: Vec<AdvisoryRow> = sqlx::query_as(
                "SELECT id, revision, content, first_seen, last_changed FROM advisories
                 WHERE issue_id = (SELECT issue_id FROM advisories WHERE id = $1) ORDER BY first_seen, id",
            )
            .bind(id.as_str()).fetch_all(pool).await?;
            rows.into_iter().map(AdvisoryRow::into_advisory).collect()
        })
    }

    /// The issue of each advisory (advisory id → issue id).
    pub async fn issue_ids(&self, ids: &[AdvisoryId]) -> Result<std::collections::HashMap<String, String>> {
        let mut out = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            let rows: Vec<(String, Option<String>)> = dispatch!(self, pool => {
                let mut qb = QueryBuilder::new("SELECT id, issue_id FROM advisories WHERE id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                sep.push_unseparated(")");
                qb.build_query_as().fetch_all(pool).await?
            });
            for (id, issue) in rows {
                let issue = issue.unwrap_or_else(|| id.clone());
                out.insert(id, issue);
            }
        }
        Ok(out)
    }

    pub async fn get_advisory(&self, id: &AdvisoryId) -> Result<Advisory> {
        dispatch!(self, pool => {
            let row: Option<AdvisoryRow> = sqlx::query_as(
                "SELECT id, revision, content, first_seen, last_changed FROM advisories WHERE id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
            row.ok_or_else(|| not_found("advisory", id))?.into_advisory()
        })
    }

    /// Every stored revision of an advisory, oldest first.
    pub async fn advisory_revisions(&self, id: &AdvisoryId) -> Result<Vec<Revision>> {
        dispatch!(self, pool => {
            let rows: Vec<(i32, DateTime<Utc>, String)> = sqlx::query_as(
                "SELECT revision, collected_at, content FROM advisory_revisions WHERE advisory_id = $1 ORDER BY revision",
            )
            .bind(id.as_str())
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|(revision, collected_at, content)| Ok(Revision { revision, collected_at, content: from_json(&content)? }))
                .collect()
        })
    }

    /// Advisories whose latest revision has no assessment yet: triage's queue.
    pub async fn advisories_to_assess(&self, limit: i64) -> Result<Vec<Advisory>> {
        dispatch!(self, pool => {
            let rows: Vec<AdvisoryRow> = sqlx::query_as(
                "SELECT a.id, a.revision, a.content, a.first_seen, a.last_changed FROM advisories a
                 LEFT JOIN assessments s ON s.advisory_id = a.id AND s.advisory_revision = a.revision
                 WHERE s.advisory_id IS NULL ORDER BY a.last_changed, a.id LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(AdvisoryRow::into_advisory).collect()
        })
    }

    pub async fn save_assessment(&self, a: &Assessment, now: DateTime<Utc>) -> Result<()> {
        let now = db_time(now);
        dispatch!(self, pool => {
            sqlx::query(
                "INSERT INTO assessments (advisory_id, advisory_revision, relevant, threat_level, score, reasons, assessed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (advisory_id, advisory_revision) DO UPDATE SET relevant = excluded.relevant,
                   threat_level = excluded.threat_level, score = excluded.score, reasons = excluded.reasons,
                   assessed_at = excluded.assessed_at",
            )
            .bind(a.advisory_id.as_str())
            .bind(a.advisory_revision)
            .bind(a.relevant)
            .bind(a.threat_level.as_str())
            .bind(a.score)
            .bind(to_json(&a.reasons))
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| match e.as_database_error() {
                Some(d) if d.is_foreign_key_violation() => not_found("advisory", &a.advisory_id),
                _ => StoreError::Database(e),
            })?;
            Ok(())
        })
    }

    /// Assessed advisories, most relevant first.
    pub async fn list_candidates(&self, filter: &CandidateFilter) -> Result<Vec<Candidate>> {
        dispatch!(self, pool => {
            let rows: Vec<CandidateRow> = sqlx::query_as(
                sqlx::AssertSqlSafe(format!("{CANDIDATES} WHERE COALESCE(o.relevant, s.relevant) OR $1
                 ORDER BY s.score DESC, a.last_changed DESC, a.id LIMIT $2")),
            )
            .bind(filter.include_irrelevant)
            .bind(filter.limit.unwrap_or(500))
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(CandidateRow::into_candidate).collect()
        })
    }

    /// An advisory with its latest verdict (override applied), if it has been assessed.
    pub async fn candidate(&self, id: &AdvisoryId) -> Result<Option<Candidate>> {
        dispatch!(self, pool => {
            let row: Option<CandidateRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{CANDIDATES} WHERE a.id = $1")))
                .bind(id.as_str())
                .fetch_optional(pool)
                .await?;
            row.map(CandidateRow::into_candidate).transpose()
        })
    }

    /// Records an analyst's correction of triage's verdict on the advisory's current
    /// revision, with the reason, and audits it. A later revision is assessed afresh.
    pub async fn override_assessment(
        &self,
        id: &AdvisoryId,
        relevant: Option<bool>,
        threat_level: Option<ThreatLevel>,
        reason: &str,
        actor: &AnalystId,
        now: DateTime<Utc>,
    ) -> Result<Candidate> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(StoreError::Invalid { what: "override", why: "a reason is required".into() });
        }
        if relevant.is_none() && threat_level.is_none() {
            return Err(StoreError::Invalid {
                what: "override",
                why: "change relevance, threat level or both".into(),
            });
        }
        let now = db_time(now);
        let current = self
            .candidate(id)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("advisory {id} has not been assessed yet")))?;
        let revision = current.advisory.revision;
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO assessment_overrides (advisory_id, advisory_revision, relevant, threat_level, reason, analyst_id, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(id.as_str()).bind(revision).bind(relevant).bind(threat_level.map(|l| l.as_str())).bind(reason)
            .bind(actor.as_str()).bind(now)
            .execute(&mut *tx).await?;
            let details = serde_json::json!({
                "revision": revision,
                "relevant": { "from": current.assessment.relevant, "to": relevant },
                "threat_level": { "from": current.assessment.threat_level, "to": threat_level },
                "reason": reason,
            });
            audit!(tx, actor, "triage.override", id, details.to_string(), now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.candidate(id).await?.ok_or_else(|| not_found("advisory", id))
    }

    /// Counts for monitoring: outbox rows and bulletins by state, advisories, relevant
    /// candidates.
    pub async fn metrics(&self) -> Result<Metrics> {
        dispatch!(self, pool => {
            let deliveries: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetch_all(pool).await?;
            let bulletins: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, COUNT(*) FROM bulletins GROUP BY state").fetch_all(pool).await?;
            let (advisories,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM advisories").fetch_one(pool).await?;
            let (relevant,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM ({CANDIDATES} WHERE COALESCE(o.relevant, s.relevant)) c"
            )))
            .fetch_one(pool)
            .await?;
            let mut by_state: BTreeMap<String, i64> = DeliveryState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
            by_state.extend(deliveries);
            let mut b_state: BTreeMap<String, i64> = BulletinState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
            b_state.extend(bulletins);
            Ok(Metrics { deliveries: by_state, bulletins: b_state, advisories, relevant_candidates: relevant })
        })
    }

    // ----- audit ------------------------------------------------------------------------

    /// Audit entries after `after_seq`, oldest first.
    pub async fn audit_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after_seq).bind(limit).fetch_all(pool).await?)
        })
    }

    /// Recomputes the whole chain: every entry's hash, its link to the one before, gapless
    /// numbering from 1, and the head. Any edited, inserted or deleted entry is found.
    pub async fn verify_audit(&self) -> Result<AuditCheck> {
        let (head_seq, head_hash): (i64, String) = dispatch!(self, pool => {
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(pool).await?
        });
        let mut prev = "0".repeat(64);
        let mut expected = 1;
        let mut after = 0;
        loop {
            let batch = self.audit_entries(after, 5000).await?;
            if batch.is_empty() {
                break;
            }
            for e in &batch {
                let broken = |why: &str| {
                    Ok(AuditCheck { entries: expected - 1, broken: Some((e.seq, why.to_owned())) })
                };
                if e.seq != expected {
                    return broken(&format!("expected entry {expected}: an entry is missing"));
                }
                if e.prev_hash != prev {
                    return broken("does not chain to the entry before it");
                }
                if e.compute_hash() != e.hash {
                    return broken("content does not match its hash: the entry was edited");
                }
                prev = e.hash.clone();
                expected += 1;
            }
            after = batch.last().map(|e| e.seq).unwrap_or(after);
        }
        let entries = expected - 1;
        if entries != head_seq || prev != head_hash {
            return Ok(AuditCheck {
                entries,
                broken: Some((
                    entries + 1,
                    format!(
                        "the log ends at {entries} but {head_seq} entries were written: entries were deleted"
                    ),
                )),
            });
        }
        Ok(AuditCheck { entries, broken: None })
    }

    /// Triage's verdict on the latest revision of one advisory, if it has one yet.
    pub async fn latest_assessment(&self, id: &AdvisoryId) -> Result<Option<Assessment>> {
        dispatch!(self, pool => {
            let row: Option<CandidateRow> = sqlx::query_as(
                sqlx::AssertSqlSafe(format!("{CANDIDATES} WHERE a.id = $1")),
            )
            .bind(id.as_str())
            .fetch_optional(pool)
            .await?;
            row.map(|r| r.into_candidate().map(|c| c.assessment)).transpose()
        })
    }

    // ----- feeds ------------------------------------------------------------------------

    pub async fn feed_state(&self, feed_id: &str) -> Result<Option<FeedState>> {
        dispatch!(self, pool => {
            let row: Option<FeedState> = sqlx::query_as("SELECT * FROM feed_state WHERE feed_id = $1")
                .bind(feed_id)
                .fetch_optional(pool)
                .await?;
            Ok(row)
        })
    }

    pub async fn list_feed_states(&self) -> Result<Vec<FeedState>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as("SELECT * FROM feed_state ORDER BY feed_id").fetch_all(pool).await?)
        })
    }

    /// Records a successful fetch. `validators` are the new ETag / Last-Modified, or `None`
    /// to keep the stored ones (a 304 Not Modified).
    pub async fn record_feed_success(
        &self,
        feed_id: &str,
        validators: Option<(Option<String>, Option<String>)>,
        items: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = db_time(now);
        let replace = validators.is_some();
        let (etag, last_modified) = validators.unwrap_or((None, None));
        dispatch!(self, pool => {
            sqlx::query(
                "INSERT INTO feed_state (feed_id, etag, last_modified, last_attempt, last_success, last_error, consecutive_failures, items_seen)
                 VALUES ($1, $2, $3, $4, $4, NULL, 0, $5)
                 ON CONFLICT (feed_id) DO UPDATE SET
                   etag = CASE WHEN $6 THEN excluded.etag ELSE feed_state.etag END,
                   last_modified = CASE WHEN $6 THEN excluded.last_modified ELSE feed_state.last_modified END,
                   last_attempt = excluded.last_attempt, last_success = excluded.last_success,
                   last_error = NULL, consecutive_failures = 0,
                   items_seen = feed_state.items_seen + excluded.items_seen",
            )
            .bind(feed_id).bind(etag).bind(last_modified).bind(now).bind(items).bind(replace)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Takes (or renews) the lease on a feed for `holder` until `until`. True when `holder`
    /// has it: nobody held it, the previous holder's lease ran out, or it is `holder`'s own.
    pub async fn lease_feed(
        &self,
        feed_id: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let (now, until) = (db_time(now), db_time(until));
        dispatch!(self, pool => {
            let row: Option<(String,)> = sqlx::query_as(
                "INSERT INTO feed_leases (feed_id, holder, until) VALUES ($1, $2, $3)
                 ON CONFLICT (feed_id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE feed_leases.holder = excluded.holder OR feed_leases.until < $4
                 RETURNING holder",
            )
            .bind(feed_id).bind(holder).bind(until).bind(now)
            .fetch_optional(pool).await?;
            Ok(row.is_some())
        })
    }

    /// Gives a feed's lease up (only `holder`'s own).
    pub async fn release_feed(&self, feed_id: &str, holder: &str) -> Result<()> {
        dispatch!(self, pool => {
            sqlx::query("DELETE FROM feed_leases WHERE feed_id = $1 AND holder = $2")
                .bind(feed_id).bind(holder).execute(pool).await?;
            Ok(())
        })
    }

    /// Stores an incremental feed's cursor (creating its state row if needed).
    pub async fn set_feed_cursor(&self, feed_id: &str, cursor: Option<&str>) -> Result<()> {
        dispatch!(self, pool => {
            sqlx::query(
                "INSERT INTO feed_state (feed_id, consecutive_failures, items_seen, cursor) VALUES ($1, 0, 0, $2)
                 ON CONFLICT (feed_id) DO UPDATE SET cursor = excluded.cursor",
            )
            .bind(feed_id).bind(cursor).execute(pool).await?;
            Ok(())
        })
    }

    pub async fn record_feed_failure(&self, feed_id: &str, error: &str, now: DateTime<Utc>) -> Result<()> {
        let now = db_time(now);
        dispatch!(self, pool => {
            sqlx::query(
                "INSERT INTO feed_state (feed_id, last_attempt, last_error, consecutive_failures, items_seen)
                 VALUES ($1, $2, $3, 1, 0)
                 ON CONFLICT (feed_id) DO UPDATE SET last_attempt = excluded.last_attempt,
                   last_error = excluded.last_error,
                   consecutive_failures = feed_state.consecutive_failures + 1",
            )
            .bind(feed_id).bind(now).bind(error)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    // ----- analysts ---------------------------------------------------------------------

    /// Creates an analyst whose API token hashes to `token_hash`.
    pub async fn create_analyst(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Analyst> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(StoreError::Invalid {
                what: "analyst name",
                why: format!("`{name}` must be 1–100 characters"),
            });
        }
        let analyst = Analyst {
            id: AnalystId::from_suffix(&suffix()),
            name: name.to_owned(),
            role,
            created_at: db_time(now),
        };
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO analysts (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(analyst.id.as_str()).bind(&analyst.name).bind(role.as_str()).bind(token_hash).bind(analyst.created_at)
                .execute(&mut *tx)
                .await
                .map_err(|e| unique_as_conflict(e, || format!("analyst `{name}` already exists")))?;
            audit!(tx, "operator", "user.create", analyst.id, serde_json::json!({ "name": analyst.name, "role": role }).to_string(), analyst.created_at);
            tx.commit().await?;
            Ok(analyst)
        })
    }

    /// Sets (or, with `None`, removes) an analyst's console password hash; their sessions
    /// end. Audited without the hash.
    pub async fn set_analyst_password(
        &self,
        name: &str,
        password_hash: Option<&str>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let analyst = self.analyst_by_name(name).await?;
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE analysts SET password_hash = $1 WHERE id = $2")
                .bind(password_hash).bind(analyst.id.as_str()).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM sessions WHERE analyst_id = $1").bind(analyst.id.as_str()).execute(&mut *tx).await?;
            audit!(tx, actor, "user.password", analyst.id, serde_json::json!({ "name": analyst.name, "set": password_hash.is_some() }).to_string(), now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The analyst of that name and their password hash (None: no console password).
    pub async fn analyst_credentials(&self, name: &str) -> Result<Option<(Analyst, Option<String>)>> {
        dispatch!(self, pool => {
            let row: Option<AnalystSecretRow> =
                sqlx::query_as("SELECT id, name, role, created_at, password_hash AS secret FROM analysts WHERE name = $1")
                    .bind(name).fetch_optional(pool).await?;
            row.map(AnalystSecretRow::split).transpose()
        })
    }

    /// Starts a console session (the cookie value is known only by its hash).
    pub async fn create_session(
        &self,
        id_hash: &str,
        analyst: &AnalystId,
        csrf: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let (now, expires_at) = (db_time(now), db_time(expires_at));
        dispatch!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1").bind(now).execute(pool).await?;
            sqlx::query("INSERT INTO sessions (id_hash, analyst_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id_hash).bind(analyst.as_str()).bind(csrf).bind(now).bind(expires_at)
                .execute(pool).await?;
            Ok(())
        })
    }

    /// The analyst and CSRF token of a live session.
    pub async fn session(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<(Analyst, String)>> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let row: Option<AnalystSecretRow> = sqlx::query_as(
                "SELECT a.id, a.name, a.role, a.created_at, s.csrf AS secret FROM sessions s JOIN analysts a ON a.id = s.analyst_id
                 WHERE s.id_hash = $1 AND s.expires_at > $2",
            )
            .bind(id_hash).bind(now).fetch_optional(pool).await?;
            match row.map(AnalystSecretRow::split).transpose()? {
                Some((a, Some(csrf))) => Ok(Some((a, csrf))),
                _ => Ok(None),
            }
        })
    }

    /// Appends an entry for an action that changes nothing else in the store (a sign-in, a
    /// test message sent to an endpoint).
    pub async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            audit!(tx, actor, action, subject, details.to_string(), now);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Ends a session (signing out).
    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        dispatch!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1").bind(id_hash).execute(pool).await?;
            Ok(())
        })
    }

    /// Replaces an analyst's API token (the old one stops working at once).
    pub async fn set_analyst_token(&self, name: &str, token_hash: &str) -> Result<()> {
        dispatch!(self, pool => {
            let done = sqlx::query("UPDATE analysts SET token_hash = $1 WHERE name = $2")
                .bind(token_hash).bind(name)
                .execute(pool).await?;
            if done.rows_affected() == 0 { Err(not_found("analyst", name)) } else { Ok(()) }
        })
    }

    pub async fn analyst_by_token_hash(&self, token_hash: &str) -> Result<Option<Analyst>> {
        dispatch!(self, pool => {
            let row: Option<AnalystRow> = sqlx::query_as("SELECT id, name, role, created_at FROM analysts WHERE token_hash = $1")
                .bind(token_hash).fetch_optional(pool).await?;
            row.map(AnalystRow::into_analyst).transpose()
        })
    }

    pub async fn analyst_by_name(&self, name: &str) -> Result<Analyst> {
        dispatch!(self, pool => {
            let row: Option<AnalystRow> = sqlx::query_as("SELECT id, name, role, created_at FROM analysts WHERE name = $1")
                .bind(name).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("analyst", name))?.into_analyst()
        })
    }

    pub async fn list_analysts(&self) -> Result<Vec<Analyst>> {
        dispatch!(self, pool => {
            let rows: Vec<AnalystRow> = sqlx::query_as("SELECT id, name, role, created_at FROM analysts ORDER BY name")
                .fetch_all(pool).await?;
            rows.into_iter().map(AnalystRow::into_analyst).collect()
        })
    }

    // ----- bulletins --------------------------------------------------------------------

    /// Creates a draft written by `author` from the given advisories, with the next human
    /// reference of the year (`{prefix}-{year}-{seq:04}`).
    pub async fn create_bulletin(
        &self,
        content: &BulletinContent,
        advisory_ids: &[AdvisoryId],
        author: &AnalystId,
        prefix: &str,
        now: DateTime<Utc>,
    ) -> Result<Bulletin> {
        content.validate().map_err(|why| StoreError::Invalid { what: "bulletin", why })?;
        let now = db_time(now);
        let year = now.year();
        let id = BulletinId::from_suffix(&suffix());
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for adv in advisory_ids {
                let found: Option<(String,)> = sqlx::query_as("SELECT id FROM advisories WHERE id = $1")
                    .bind(adv.as_str()).fetch_optional(&mut *tx).await?;
                if found.is_none() {
                    return Err(not_found("advisory", adv));
                }
            }
            let author_found: Option<(String,)> = sqlx::query_as("SELECT id FROM analysts WHERE id = $1")
                .bind(author.as_str()).fetch_optional(&mut *tx).await?;
            if author_found.is_none() {
                return Err(not_found("analyst", author));
            }
            let (seq,): (i64,) = sqlx::query_as(
                "INSERT INTO bulletin_seq (year, last) VALUES ($1, 1)
                 ON CONFLICT (year) DO UPDATE SET last = bulletin_seq.last + 1 RETURNING last",
            )
            .bind(year).fetch_one(&mut *tx).await?;
            let reference = broadcast_core::reference(prefix, year, seq);
            sqlx::query(
                "INSERT INTO bulletins (id, reference, state, content, advisory_ids, author_id, approver_id, review_comment,
                                        created_at, updated_at, published_at, version)
                 VALUES ($1, $2, 'draft', $3, $4, $5, NULL, NULL, $6, $6, NULL, 1)",
            )
            .bind(id.as_str()).bind(&reference).bind(to_json(content)).bind(to_json(&advisory_ids))
            .bind(author.as_str()).bind(now)
            .execute(&mut *tx).await?;
            insert_event!(tx, id, "create", author, None, BulletinState::Draft, None::<&str>, now)?;
            audit!(tx, author, "bulletin.create", reference, serde_json::json!({ "id": id, "title": content.title, "advisories": advisory_ids }).to_string(), now);
            tx.commit().await?;
            Ok(Bulletin {
                id, reference, state: BulletinState::Draft, content: content.clone(),
                advisory_ids: advisory_ids.to_vec(), author: author.clone(), approver: None, review_comment: None,
                created_at: now, updated_at: now, published_at: None, version: 1,
            })
        })
    }

    /// Finds a bulletin by id (`blt_…`) or human reference (`HCB-2026-0042`).
    pub async fn get_bulletin(&self, key: &str) -> Result<Bulletin> {
        dispatch!(self, pool => {
            let row: Option<BulletinRow> = sqlx::query_as("SELECT * FROM bulletins WHERE id = $1 OR reference = $1")
                .bind(key).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("bulletin", key))?.into_bulletin()
        })
    }

    pub async fn list_bulletins(&self, state: Option<BulletinState>) -> Result<Vec<Bulletin>> {
        dispatch!(self, pool => {
            let rows: Vec<BulletinRow> = sqlx::query_as(
                "SELECT * FROM bulletins WHERE ($1 IS NULL OR state = $1) ORDER BY created_at DESC, id",
            )
            .bind(state.map(|s| s.as_str()))
            .fetch_all(pool).await?;
            rows.into_iter().map(BulletinRow::into_bulletin).collect()
        })
    }

    /// Replaces a draft's content. Fails if it is no longer a draft or if `expected_version`
    /// is given and the bulletin changed since.
    pub async fn update_bulletin_content(
        &self,
        key: &str,
        content: &BulletinContent,
        actor: &AnalystId,
        expected_version: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<Bulletin> {
        content.validate().map_err(|why| StoreError::Invalid { what: "bulletin", why })?;
        let now = db_time(now);
        let current = self.get_bulletin(key).await?;
        if !current.state.is_editable() {
            return Err(StoreError::Conflict(format!(
                "bulletin {} is {}; only drafts can be edited",
                current.reference, current.state
            )));
        }
        let version = expected_version.unwrap_or(current.version);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE bulletins SET content = $1, updated_at = $2, version = version + 1
                 WHERE id = $3 AND state = 'draft' AND version = $4",
            )
            .bind(to_json(content)).bind(now).bind(current.id.as_str()).bind(version)
            .execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "bulletin {} changed while you were editing (expected version {version}); reload and retry",
                    current.reference
                )));
            }
            insert_event!(tx, current.id, "edit", actor, Some(BulletinState::Draft), BulletinState::Draft, None::<&str>, now)?;
            audit!(tx, actor, "bulletin.edit", current.reference, serde_json::json!({ "version": version + 1, "content": content }).to_string(), now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.get_bulletin(current.id.as_str()).await
    }

    /// Applies `action` by `actor` to a bulletin.
    ///
    /// The core state machine decides whether the move is legal and applies the four-eyes
    /// rule; the UPDATE then only succeeds if the bulletin is still in the state (and
    /// version) that decision was made on, and — for approve and reject — if the actor is
    /// not the stored author. Publishing writes one outbox row per recipient and channel in
    /// the same transaction; withdrawing a published bulletin cancels its pending rows.
    pub async fn transition_bulletin(
        &self,
        key: &str,
        action: Action,
        actor: &AnalystId,
        comment: Option<&str>,
        expected_version: Option<i32>,
        now: DateTime<Utc>,
    ) -> Result<Transitioned> {
        let now = db_time(now);
        let current = self.get_bulletin(key).await?;
        let next = current.check(action, actor)?;
        let version = expected_version.unwrap_or(current.version);
        let approver = if action == Action::Approve { Some(actor.clone()) } else { current.approver.clone() };
        let published_at = if action == Action::Publish { Some(now) } else { current.published_at };
        let review_comment = match (action, comment) {
            (Action::Approve | Action::Reject, Some(c)) => Some(c.to_owned()),
            _ => current.review_comment.clone(),
        };
        let four_eyes: i32 = action.needs_second_pair_of_eyes().into();
        let (created, cancelled) = dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE bulletins SET state = $1, version = version + 1, updated_at = $2, approver_id = $3,
                        published_at = $4, review_comment = $5
                 WHERE id = $6 AND state = $7 AND version = $8 AND ($9 = 0 OR author_id <> $10)",
            )
            .bind(next.as_str()).bind(now).bind(approver.as_ref().map(|a| a.as_str())).bind(published_at)
            .bind(review_comment.as_deref()).bind(current.id.as_str()).bind(current.state.as_str()).bind(version)
            .bind(four_eyes).bind(actor.as_str())
            .execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!(
                    "bulletin {} changed before it could be {}d (expected {} at version {version}); reload and retry",
                    current.reference, action, current.state
                )));
            }
            insert_event!(tx, current.id, action.as_str(), actor, Some(current.state), next, comment, now)?;
            let mut created = 0;
            let mut cancelled = 0;
            if action == Action::Publish {
                let mut b = current.clone();
                b.state = next;
                created = fan_out!(tx, &b, now);
            }
            if action == Action::Withdraw {
                cancelled = sqlx::query(
                    "UPDATE deliveries SET state = 'cancelled', reason = 'bulletin withdrawn', lease_until = NULL, leased_by = NULL
                     WHERE bulletin_id = $1 AND state = 'pending'",
                )
                .bind(current.id.as_str()).execute(&mut *tx).await?.rows_affected();
            }
            audit!(
                tx, actor, format!("bulletin.{action}"), current.reference,
                serde_json::json!({ "from": current.state, "to": next, "comment": comment, "deliveries_created": created, "deliveries_cancelled": cancelled }).to_string(),
                now
            );
            tx.commit().await?;
            Ok::<_, StoreError>((created, cancelled))
        })?;
        // PostgreSQL plans the outbox claim from table statistics: after a large fan-out they
        // are stale until autovacuum's next analyse, and the claim sorts every pending row
        // (measured at 53 ms a claim with 100,000 rows). Refresh them now.
        if created >= 1000
            && let Backend::Postgres(pool) = &self.backend
        {
            // Best effort: the bulletin is published either way.
            if let Err(e) = sqlx::query("ANALYZE deliveries").execute(pool).await {
                tracing::warn!(error = %e, "could not analyse the deliveries table");
            }
        }
        let bulletin = self.get_bulletin(current.id.as_str()).await?;
        Ok(Transitioned { bulletin, deliveries_created: created, deliveries_cancelled: cancelled })
    }

    pub async fn bulletin_events(&self, id: &BulletinId) -> Result<Vec<BulletinEvent>> {
        dispatch!(self, pool => {
            Ok(sqlx::query_as(
                "SELECT action, actor_id, from_state, to_state, comment, at FROM bulletin_events WHERE bulletin_id = $1 ORDER BY id",
            )
            .bind(id.as_str()).fetch_all(pool).await?)
        })
    }

    // ----- subscribers ------------------------------------------------------------------

    pub async fn create_organisation(
        &self,
        name: &str,
        tlp_clearance: Tlp,
        min_threat_level: ThreatLevel,
        now: DateTime<Utc>,
    ) -> Result<Organisation> {
        self.create_organisation_by("operator", name, tlp_clearance, min_threat_level, now).await
    }

    /// Creates an organisation, audited as `actor`'s in the same transaction.
    pub async fn create_organisation_by(
        &self,
        actor: &str,
        name: &str,
        tlp_clearance: Tlp,
        min_threat_level: ThreatLevel,
        now: DateTime<Utc>,
    ) -> Result<Organisation> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(StoreError::Invalid {
                what: "organisation name",
                why: format!("`{name}` must be 1–200 characters"),
            });
        }
        let org = Organisation {
            id: OrgId::from_suffix(&suffix()),
            name: name.to_owned(),
            tlp_clearance,
            min_threat_level,
            interests: Vec::new(),
            digest_hour: None,
            created_at: db_time(now),
        };
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO organisations (id, name, tlp_clearance, min_threat_level, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(org.id.as_str()).bind(&org.name).bind(tlp_clearance.as_str()).bind(min_threat_level.as_str()).bind(org.created_at)
                .execute(&mut *tx).await
                .map_err(|e| unique_as_conflict(e, || format!("organisation `{name}` already exists")))?;
            audit!(tx, actor, "organisation.create", org.id, serde_json::json!({ "name": org.name }).to_string(), org.created_at);
            tx.commit().await?;
            Ok(org)
        })
    }

    /// Gives an organisation a new incident-API token (stored hashed; the old one stops
    /// working). Audited without the token.
    pub async fn set_org_incident_token(
        &self,
        key: &str,
        token_hash: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Organisation> {
        update_organisation!(
            self,
            key,
            "incident_token_hash",
            token_hash,
            actor,
            "organisation.incident_token",
            "{}".to_owned(),
            now
        )
    }

    /// The organisation an incident-API token belongs to.
    pub async fn org_by_incident_token(&self, token_hash: &str) -> Result<Option<Organisation>> {
        let id: Option<(String,)> = dispatch!(self, pool => {
            sqlx::query_as("SELECT id FROM organisations WHERE incident_token_hash = $1")
                .bind(token_hash).fetch_optional(pool).await?
        });
        match id {
            Some((id,)) => Ok(Some(self.get_organisation(&id).await?)),
            None => Ok(None),
        }
    }

    /// Finds an organisation by id or exact name.
    pub async fn get_organisation(&self, key: &str) -> Result<Organisation> {
        dispatch!(self, pool => {
            let row: Option<OrgRow> = sqlx::query_as("SELECT * FROM organisations WHERE id = $1 OR name = $1")
                .bind(key).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("organisation", key))?.into_org()
        })
    }

    pub async fn list_organisations(&self) -> Result<Vec<Organisation>> {
        dispatch!(self, pool => {
            let rows: Vec<OrgRow> = sqlx::query_as("SELECT * FROM organisations ORDER BY name").fetch_all(pool).await?;
            rows.into_iter().map(OrgRow::into_org).collect()
        })
    }

    /// Sets the vendors and products an organisation runs (empty: every bulletin). Audited.
    /// Puts an organisation's email contacts on a daily digest at `hour`:00 UTC, or back to
    /// immediate (`None`). Audited. Emails already waiting for a digest keep their time.
    pub async fn set_organisation_digest(
        &self,
        key: &str,
        hour: Option<u8>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Organisation> {
        if let Some(h) = hour
            && h > 23
        {
            return Err(StoreError::Invalid {
                what: "digest hour",
                why: format!("{h} is not an hour of the day (0–23)"),
            });
        }
        let details = serde_json::json!({ "digest_hour": hour }).to_string();
        update_organisation!(
            self,
            key,
            "digest_hour",
            hour.map(i32::from),
            actor,
            "organisation.digest",
            details,
            now
        )
    }

    /// Takes the lease on every pending email of one contact's digest (those not leased by
    /// another worker): the rows that go out together in one email.
    pub async fn claim_digest(
        &self,
        worker: &str,
        contact: &str,
        digest_at: DateTime<Utc>,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<Delivery>> {
        let now = db_time(now);
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE deliveries SET lease_until = $1, leased_by = $2
                 WHERE channel = 'email' AND recipient_id = $3 AND digest_at = $4 AND state = 'pending'
                   AND (lease_until IS NULL OR lease_until <= $5 OR leased_by = $2)
                 RETURNING {DELIVERY_COLUMNS}"
            )))
            .bind(until).bind(worker).bind(contact).bind(db_time(digest_at)).bind(now)
            .fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let mut out = rows.into_iter().map(DeliveryRow::into_delivery).collect::<Result<Vec<_>>>()?;
            out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(out)
        })
    }

    pub async fn set_organisation_interests(
        &self,
        key: &str,
        interests: &[String],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Organisation> {
        let cleaned: Vec<String> =
            interests.iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect();
        if cleaned.iter().any(|i| i.chars().count() > 200) {
            return Err(StoreError::Invalid {
                what: "interests",
                why: "an interest is longer than 200 characters".into(),
            });
        }
        let details = serde_json::json!({ "interests": cleaned }).to_string();
        update_organisation!(
            self,
            key,
            "interests",
            to_json(&cleaned),
            actor,
            "organisation.interests",
            details,
            now
        )
    }

    /// Records that a delivery to a contact hard-bounced (an SMTP 5xx). After `threshold`
    /// failed deliveries with a 5xx reply within 30 days the address is suppressed: no more
    /// email goes to it, its pending deliveries are suppressed, and it is audited. Returns
    /// whether the address is now suppressed.
    pub async fn record_hard_bounce(
        &self,
        id: &ContactId,
        reply: &str,
        threshold: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let now = db_time(now);
        let since = now - chrono::Duration::days(30);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (bounces,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM deliveries WHERE channel = 'email' AND recipient_id = $1 AND state = 'failed'
                   AND reason LIKE '5%' AND created_at >= $2",
            )
            .bind(id.as_str()).bind(since).fetch_one(&mut *tx).await?;
            if bounces < threshold {
                return Ok(false);
            }
            let reason = format!("address suppressed after {bounces} hard bounces (last: {})", reply.chars().take(120).collect::<String>());
            let done = sqlx::query("UPDATE contacts SET suppressed_reason = $1 WHERE id = $2 AND suppressed_reason IS NULL")
                .bind(&reason).bind(id.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() > 0 {
                sqlx::query(
                    "UPDATE deliveries SET state = 'suppressed', reason = $1, lease_until = NULL, leased_by = NULL
                     WHERE channel = 'email' AND recipient_id = $2 AND state = 'pending'",
                )
                .bind(&reason).bind(id.as_str()).execute(&mut *tx).await?;
                audit!(tx, "system", "contact.suppress", id, serde_json::json!({ "reason": reason }).to_string(), now);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Adds an email contact to an organisation (by id or name).
    pub async fn add_contact(
        &self,
        org: &str,
        email: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Contact> {
        self.add_contact_by("operator", org, email, name, now).await
    }

    /// Adds a contact, audited as `actor`'s in the same transaction.
    pub async fn add_contact_by(
        &self,
        actor: &str,
        org: &str,
        email: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Contact> {
        broadcast_core::validate_email(email)
            .map_err(|why| StoreError::Invalid { what: "contact email", why })?;
        let org = self.get_organisation(org).await?;
        let contact = Contact {
            id: ContactId::from_suffix(&suffix()),
            org_id: org.id.clone(),
            email: email.trim().to_owned(),
            name: name.trim().to_owned(),
            unsubscribed: false,
            suppressed_reason: None,
            created_at: db_time(now),
        };
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO contacts (id, org_id, email, name, unsubscribed, created_at) VALUES ($1, $2, $3, $4, FALSE, $5)")
                .bind(contact.id.as_str()).bind(org.id.as_str()).bind(&contact.email).bind(&contact.name).bind(contact.created_at)
                .execute(&mut *tx).await
                .map_err(|e| unique_as_conflict(e, || format!("`{email}` is already a contact of {}", org.name)))?;
            audit!(tx, actor, "contact.create", contact.id, serde_json::json!({ "org": org.id, "email": contact.email }).to_string(), contact.created_at);
            tx.commit().await?;
            Ok(contact)
        })
    }

    /// Adds a webhook endpoint. The URL must already be checked by the caller's policy; the
    /// store only refuses what is not http(s).
    pub async fn add_endpoint(
        &self,
        org: &str,
        url: &str,
        secret: &str,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        self.add_endpoint_with_format(org, url, secret, EndpointFormat::Broadcast, now).await
    }

    /// Adds a webhook endpoint receiving `format`.
    pub async fn add_endpoint_with_format(
        &self,
        org: &str,
        url: &str,
        secret: &str,
        format: EndpointFormat,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        self.add_endpoint_by("operator", org, url, secret, format, now).await
    }

    /// Adds a webhook endpoint, audited as `actor`'s in the same transaction (the secret is
    /// not in the entry).
    pub async fn add_endpoint_by(
        &self,
        actor: &str,
        org: &str,
        url: &str,
        secret: &str,
        format: EndpointFormat,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        let lower = url.trim().to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(StoreError::Invalid {
                what: "endpoint URL",
                why: format!("`{url}` is not an http(s) URL"),
            });
        }
        let org = self.get_organisation(org).await?;
        let ep = Endpoint {
            id: EndpointId::from_suffix(&suffix()),
            org_id: org.id.clone(),
            url: url.trim().to_owned(),
            secret: secret.to_owned(),
            previous_secret: None,
            previous_secret_until: None,
            enabled: true,
            format,
            created_at: db_time(now),
            failing_since: None,
            consecutive_failures: 0,
            failure_warned_at: None,
        };
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO endpoints (id, org_id, url, secret, enabled, created_at, format) VALUES ($1, $2, $3, $4, TRUE, $5, $6)")
                .bind(ep.id.as_str()).bind(org.id.as_str()).bind(&ep.url).bind(&ep.secret).bind(ep.created_at).bind(format.as_str())
                .execute(&mut *tx).await?;
            audit!(tx, actor, "endpoint.create", ep.id, serde_json::json!({ "org": org.id, "url": ep.url }).to_string(), ep.created_at);
            tx.commit().await?;
            Ok(ep)
        })
    }

    pub async fn list_contacts(&self, org_id: &OrgId) -> Result<Vec<Contact>> {
        dispatch!(self, pool => {
            let rows: Vec<ContactRow> = sqlx::query_as("SELECT * FROM contacts WHERE org_id = $1 ORDER BY email")
                .bind(org_id.as_str()).fetch_all(pool).await?;
            rows.into_iter().map(ContactRow::into_contact).collect()
        })
    }

    pub async fn list_endpoints(&self, org_id: &OrgId) -> Result<Vec<Endpoint>> {
        dispatch!(self, pool => {
            let rows: Vec<EndpointRow> = sqlx::query_as("SELECT * FROM endpoints WHERE org_id = $1 ORDER BY created_at, id")
                .bind(org_id.as_str()).fetch_all(pool).await?;
            rows.into_iter().map(EndpointRow::into_endpoint).collect()
        })
    }

    pub async fn get_contact(&self, id: &ContactId) -> Result<Contact> {
        dispatch!(self, pool => {
            let row: Option<ContactRow> = sqlx::query_as("SELECT * FROM contacts WHERE id = $1")
                .bind(id.as_str()).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("contact", id))?.into_contact()
        })
    }

    /// Many contacts by id in one query (the delivery worker reads a claimed batch's
    /// recipients at once). Ids that do not exist are simply absent.
    pub async fn get_contacts(&self, ids: &[ContactId]) -> Result<Vec<Contact>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (sql, ids) = select_by_ids("contacts", ids.iter().map(|id| id.as_str()));
        dispatch!(self, pool => {
            let mut q = sqlx::query_as::<_, ContactRow>(sqlx::AssertSqlSafe(sql.clone()));
            for id in &ids {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?.into_iter().map(ContactRow::into_contact).collect()
        })
    }

    /// Many endpoints by id in one query; ids that do not exist are simply absent.
    pub async fn get_endpoints(&self, ids: &[EndpointId]) -> Result<Vec<Endpoint>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (sql, ids) = select_by_ids("endpoints", ids.iter().map(|id| id.as_str()));
        dispatch!(self, pool => {
            let mut q = sqlx::query_as::<_, EndpointRow>(sqlx::AssertSqlSafe(sql.clone()));
            for id in &ids {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?.into_iter().map(EndpointRow::into_endpoint).collect()
        })
    }

    pub async fn get_endpoint(&self, id: &EndpointId) -> Result<Endpoint> {
        dispatch!(self, pool => {
            let row: Option<EndpointRow> = sqlx::query_as("SELECT * FROM endpoints WHERE id = $1")
                .bind(id.as_str()).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("endpoint", id))?.into_endpoint()
        })
    }

    /// Marks a contact unsubscribed and suppresses its pending email deliveries.
    pub async fn unsubscribe_contact(&self, id: &ContactId, now: DateTime<Utc>) -> Result<Contact> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query("UPDATE contacts SET unsubscribed = TRUE WHERE id = $1")
                .bind(id.as_str()).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(not_found("contact", id));
            }
            sqlx::query(
                "UPDATE deliveries SET state = 'suppressed', reason = 'unsubscribed', lease_until = NULL, leased_by = NULL
                 WHERE channel = 'email' AND recipient_id = $1 AND state = 'pending'",
            )
            .bind(id.as_str()).execute(&mut *tx).await?;
            audit!(tx, "recipient", "contact.unsubscribe", id, "{}".to_owned(), now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.get_contact(id).await
    }

    /// Disables (or re-enables) an endpoint. Disabling suppresses its pending deliveries with
    /// the reason; both are audited.
    pub async fn set_endpoint_enabled(
        &self,
        id: &EndpointId,
        enabled: bool,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        if !self.change_endpoint_enabled(id, enabled, actor, reason, now, false).await? {
            return Err(not_found("endpoint", id));
        }
        self.get_endpoint(id).await
    }

    /// Disables an endpoint that kept failing (actor `system`, audited, pending deliveries
    /// suppressed). Returns false if it was already disabled, so only one worker sends the
    /// notice.
    pub async fn disable_failing_endpoint(
        &self,
        id: &EndpointId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.change_endpoint_enabled(id, false, "system", reason, now, true).await
    }

    /// Endpoints Broadcast disabled whose organisation's notice is due, with why.
    pub async fn due_disable_notices(&self, now: DateTime<Utc>) -> Result<Vec<(Endpoint, String)>> {
        let now = db_time(now);
        let ids: Vec<(String, Option<String>)> = dispatch!(self, pool => {
            sqlx::query_as("SELECT id, disable_notice_reason FROM endpoints WHERE disable_notice_due <= $1 ORDER BY disable_notice_due LIMIT 100")
                .bind(now).fetch_all(pool).await?
        });
        let mut out = Vec::new();
        for (id, reason) in ids {
            let ep = self.get_endpoint(&parse_id(&id)?).await?;
            out.push((ep, reason.unwrap_or_default()));
        }
        Ok(out)
    }

    /// A disable notice was sent (`retry_at` None) or must be tried again at `retry_at`.
    pub async fn disable_notice_done(&self, id: &EndpointId, retry_at: Option<DateTime<Utc>>) -> Result<()> {
        let retry_at = retry_at.map(db_time);
        dispatch!(self, pool => {
            sqlx::query(
                "UPDATE endpoints SET disable_notice_due = $1,
                     disable_notice_reason = CASE WHEN $1 IS NULL THEN NULL ELSE disable_notice_reason END
                 WHERE id = $2",
            )
            .bind(retry_at).bind(id.as_str()).execute(pool).await?;
            Ok(())
        })
    }

    /// Enables or disables an endpoint, audited; disabling suppresses its pending deliveries
    /// and enabling starts its failure count afresh. With `only_if_changed`, an endpoint
    /// already in that state is left alone. Whether a row changed.
    async fn change_endpoint_enabled(
        &self,
        id: &EndpointId,
        enabled: bool,
        actor: &str,
        reason: &str,
        now: DateTime<Utc>,
        only_if_changed: bool,
    ) -> Result<bool> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE endpoints SET enabled = $1,
                    failing_since = CASE WHEN $1 THEN NULL ELSE failing_since END,
                    consecutive_failures = CASE WHEN $1 THEN 0 ELSE consecutive_failures END,
                    failure_warned_at = CASE WHEN $1 THEN NULL ELSE failure_warned_at END
                 WHERE id = $2 AND (NOT $3 OR enabled <> $1)",
            )
            .bind(enabled).bind(id.as_str()).bind(only_if_changed).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            // Broadcast's own disabling owes the organisation a notice, due now; enabling
            // (by anyone) cancels one still owed.
            sqlx::query("UPDATE endpoints SET disable_notice_due = $1, disable_notice_reason = $2 WHERE id = $3")
                .bind(if !enabled && actor == "system" { Some(now) } else { None })
                .bind(if !enabled && actor == "system" { Some(reason) } else { None })
                .bind(id.as_str())
                .execute(&mut *tx).await?;
            let mut suppressed = 0;
            if !enabled {
                suppressed = sqlx::query(
                    "UPDATE deliveries SET state = 'suppressed', reason = $1, lease_until = NULL, leased_by = NULL
                     WHERE channel = 'webhook' AND recipient_id = $2 AND state = 'pending'",
                )
                .bind(format!("endpoint disabled: {reason}")).bind(id.as_str())
                .execute(&mut *tx).await?.rows_affected();
            }
            let action = if enabled { "endpoint.enable" } else { "endpoint.disable" };
            audit!(tx, actor, action, id, serde_json::json!({ "reason": reason, "pending_suppressed": suppressed }).to_string(), now);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Notes the result of a webhook attempt for the endpoint's health: a success clears the
    /// failure streak; a failure extends it (starting `failing_since` if it is new). Returns
    /// the endpoint as it now is, for the worker to decide on a warning or disabling.
    pub async fn note_endpoint_result(
        &self,
        id: &EndpointId,
        ok: bool,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        let now = db_time(now);
        dispatch!(self, pool => {
            if ok {
                sqlx::query(
                    "UPDATE endpoints SET failing_since = NULL, consecutive_failures = 0, failure_warned_at = NULL
                     WHERE id = $1 AND (consecutive_failures > 0 OR failing_since IS NOT NULL)",
                )
                .bind(id.as_str()).execute(pool).await?
            } else {
                sqlx::query(
                    "UPDATE endpoints SET failing_since = COALESCE(failing_since, $1),
                        consecutive_failures = consecutive_failures + 1
                     WHERE id = $2",
                )
                .bind(now).bind(id.as_str()).execute(pool).await?
            };
            Ok::<(), StoreError>(())
        })?;
        self.get_endpoint(id).await
    }

    /// Records that the organisation was warned about a failing endpoint (audited). Returns
    /// false if it had already been warned in this failure streak.
    pub async fn mark_endpoint_warned(
        &self,
        id: &EndpointId,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE endpoints SET failure_warned_at = $1 WHERE id = $2 AND failure_warned_at IS NULL",
            )
            .bind(now).bind(id.as_str()).execute(&mut *tx).await?;
            let first = done.rows_affected() == 1;
            if first {
                audit!(tx, "system", "endpoint.warn", id, serde_json::json!({ "detail": detail }).to_string(), now);
            }
            tx.commit().await?;
            Ok(first)
        })
    }

    /// Replaces an endpoint's signing secret. The old one keeps signing, alongside the new,
    /// until `overlap_until`, so the receiver can switch without missing a message. Audited
    /// (without either secret).
    pub async fn rotate_endpoint_secret(
        &self,
        id: &EndpointId,
        new_secret: &str,
        overlap_until: DateTime<Utc>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Endpoint> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let done = sqlx::query(
                "UPDATE endpoints SET previous_secret = secret, previous_secret_until = $1, secret = $2 WHERE id = $3",
            )
            .bind(db_time(overlap_until)).bind(new_secret).bind(id.as_str())
            .execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                return Err(not_found("endpoint", id));
            }
            audit!(tx, actor, "endpoint.rotate_secret", id, serde_json::json!({ "overlap_until": overlap_until }).to_string(), now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.get_endpoint(id).await
    }

    /// Puts a delivered or failed delivery back on the queue, due now, keeping its id (so the
    /// webhook-id / Message-ID stay the same) and its attempt history. Audited.
    pub async fn replay_delivery(
        &self,
        id: &DeliveryId,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Delivery> {
        let now = db_time(now);
        dispatch!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row: Option<(String,)> = sqlx::query_as("SELECT state FROM deliveries WHERE id = $1")
                .bind(id.as_str()).fetch_optional(&mut *tx).await?;
            let Some((state,)) = row else { return Err(not_found("delivery", id)) };
            if state != "failed" && state != "delivered" {
                return Err(StoreError::Conflict(format!(
                    "delivery {id} is {state}; only failed or delivered deliveries can be replayed"
                )));
            }
            sqlx::query(
                "UPDATE deliveries SET state = 'pending', reason = 'replayed', next_attempt_at = $1,
                    delivered_at = NULL, lease_until = NULL, leased_by = NULL WHERE id = $2",
            )
            .bind(now).bind(id.as_str()).execute(&mut *tx).await?;
            audit!(tx, actor, "delivery.replay", id, serde_json::json!({ "was": state }).to_string(), now);
            tx.commit().await?;
            Ok::<(), StoreError>(())
        })?;
        self.get_delivery(id).await
    }

    /// Replays every failed delivery to an endpoint created since `since`. Returns their ids.
    pub async fn replay_failed_for_endpoint(
        &self,
        endpoint: &EndpointId,
        since: DateTime<Utc>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeliveryId>> {
        self.get_endpoint(endpoint).await?;
        let ids: Vec<(String,)> = dispatch!(self, pool => {
            sqlx::query_as(
                "SELECT id FROM deliveries WHERE channel = 'webhook' AND recipient_id = $1 AND state = 'failed'
                   AND created_at >= $2 ORDER BY created_at, id",
            )
            .bind(endpoint.as_str()).bind(db_time(since)).fetch_all(pool).await?
        });
        let mut out = Vec::new();
        for (id,) in ids {
            let id: DeliveryId = parse_id(&id)?;
            self.replay_delivery(&id, actor, now).await?;
            out.push(id);
        }
        Ok(out)
    }

    // ----- outbox -----------------------------------------------------------------------

    /// Leases up to `limit` due deliveries to `worker` until `now + lease`. Rows whose
    /// worker died come back once their lease expires. On PostgreSQL concurrent workers
    /// skip each other's rows (`FOR UPDATE SKIP LOCKED`).
    pub async fn claim_due_deliveries(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Delivery>> {
        let now = db_time(now);
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        // First attempts of new bulletins never wait behind retries of old ones: they are
        // claimed first, and retries only fill what is left of the batch.
        const DUE: &str = "FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ";
        let rows: Vec<DeliveryRow> = match &self.backend {
            Backend::Sqlite(pool) => {
                // Both claims and the commit in one command (see `sqlite_command`); the second
                // takes what the first left (`changes()` is the first's row count).
                let worker = worker.to_owned();
                let rows = sqlite_command(pool, move |qb| {
                    for (which, first) in [("attempts = 0", true), ("attempts > 0", false)] {
                        if !first {
                            qb.push("; ");
                        }
                        qb.push("UPDATE deliveries SET lease_until = ").push_bind(until);
                        qb.push(", leased_by = ").push_bind(worker.clone());
                        qb.push(format_args!(" WHERE id IN (SELECT id {DUE}")).push_bind(now);
                        qb.push(format_args!(" AND {which} AND (lease_until IS NULL OR lease_until <= "));
                        qb.push_bind(now).push(") ORDER BY next_attempt_at, id LIMIT ");
                        if first {
                            qb.push_bind(limit);
                        } else {
                            qb.push("max(").push_bind(limit).push(" - changes(), 0)");
                        }
                        qb.push(format_args!(") RETURNING {DELIVERY_COLUMNS}"));
                    }
                })
                .await?;
                rows.iter().map(sqlx::FromRow::from_row).collect::<Result<_, sqlx::Error>>()?
            }
            Backend::Postgres(pool) => {
                // One statement, one round trip: both picks lock their rows (SKIP LOCKED, so
                // workers never wait on each other) and the retries take what the first
                // attempts left. `= ANY(ARRAY(…))`, not `IN (…)`: with `IN` the planner
                // hash-joined the picks against a scan of the whole table (every claim read
                // every outbox row: 4.8 ms a claim at 10,000 rows, growing with the table).
                let due = |which: &str, limit: &str| {
                    format!(
                        "SELECT id {DUE}$3 AND {which} AND (lease_until IS NULL OR lease_until <= $3)
                         ORDER BY next_attempt_at, id LIMIT {limit}{}",
                        pool_skip_locked(pool)
                    )
                };
                let sql = format!(
                    "WITH firsts AS ({}), retries AS ({})
                     UPDATE deliveries SET lease_until = $1, leased_by = $2
                     WHERE id = ANY(ARRAY(SELECT id FROM firsts UNION ALL SELECT id FROM retries))
                     RETURNING {DELIVERY_COLUMNS}",
                    due("attempts = 0", "$4"),
                    due("attempts > 0", "GREATEST($4 - (SELECT COUNT(*) FROM firsts), 0)"),
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(until)
                    .bind(worker)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        let mut out = rows.into_iter().map(DeliveryRow::into_delivery).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.attempts > 0, a.next_attempt_at, &a.id).cmp(&(b.attempts > 0, b.next_attempt_at, &b.id))
        });
        Ok(out)
    }

    /// Hands a claimed delivery back without an attempt (its host or endpoint is at its
    /// concurrency cap): due again at `at`, lease released.
    pub async fn defer_delivery(&self, id: &DeliveryId, at: DateTime<Utc>) -> Result<()> {
        dispatch!(self, pool => {
            sqlx::query(
                "UPDATE deliveries SET next_attempt_at = $1, lease_until = NULL, leased_by = NULL
                 WHERE id = $2 AND state = 'pending'",
            )
            .bind(db_time(at)).bind(id.as_str()).execute(pool).await?;
            Ok(())
        })
    }

    /// When the earliest pending delivery is due (ignoring leases), if any.
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        dispatch!(self, pool => {
            let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
                "SELECT next_attempt_at FROM deliveries WHERE state = 'pending' ORDER BY next_attempt_at LIMIT 1",
            )
            .fetch_optional(pool).await?;
            Ok(row.map(|r| r.0))
        })
    }

    /// Records one attempt and moves the delivery on: delivered, due again later, or failed.
    pub async fn record_attempt(&self, id: &DeliveryId, rec: &AttemptRecord) -> Result<Delivery> {
        self.record_attempts(&[(id.clone(), rec.clone())]).await?.remove(0)?;
        self.get_delivery(id).await
    }

    /// Records many attempts in one transaction (the delivery worker's group commit: one
    /// commit, and on SQLite one lock, for a whole batch). Each attempt has its own result: a
    /// delivery that does not exist is reported, and the others are still recorded.
    pub async fn record_attempts(&self, batch: &[(DeliveryId, AttemptRecord)]) -> Result<Vec<Result<()>>> {
        let changes: Vec<AttemptChange> = batch.iter().map(|(id, rec)| AttemptChange::new(id, rec)).collect();
        // Chunks of distinct deliveries (an UPDATE … FROM applies one source row per target).
        let mut chunks: Vec<Vec<AttemptChange>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in changes {
            if chunks.last().is_none_or(|l| l.len() >= 512) || !seen.insert(c.id.clone()) {
                seen.clear();
                seen.insert(c.id.clone());
                chunks.push(Vec::new());
            }
            chunks.last_mut().expect("a chunk was pushed").push(c);
        }
        let order: Vec<String> = chunks.iter().flatten().map(|c| c.id.clone()).collect();
        // How many of each delivery's changes found its row (a delivery may be in two chunks).
        let mut found: HashMap<String, usize> = HashMap::with_capacity(batch.len());
        match &self.backend {
            Backend::Sqlite(pool) => {
                // One command for the whole batch: per chunk, the state change and the attempt
                // rows (numbered from the row just updated), then one commit.
                // Each chunk's VALUES lists are padded to a power of two with rows that match
                // nothing, so the command's text repeats and stays prepared (parsing a fresh
                // statement for every batch cost more than running it).
                let rows = sqlite_command(pool, move |qb| {
                    for (i, chunk) in chunks.into_iter().enumerate() {
                        if i > 0 {
                            qb.push("; ");
                        }
                        let rows = chunk.len().next_power_of_two();
                        qb.push("WITH ");
                        AttemptChange::push_values(qb, false, &chunk, rows);
                        qb.push(format_args!(" {}; WITH ", apply_attempts("")));
                        AttemptChange::push_values(qb, true, &chunk, rows);
                        qb.push(format_args!(" {}", insert_attempts_from("deliveries")));
                    }
                })
                .await?;
                for row in rows {
                    *found.entry(sqlx::Row::try_get::<String, _>(&row, 0)?).or_default() += 1;
                }
            }
            Backend::Postgres(pool) => {
                // Per chunk one statement — the state change in a data-modifying CTE, the
                // attempt rows inserted from what it returned — so one round trip, atomic on
                // its own; a transaction only when there are several chunks. The chunk is
                // bound as one array per column (`UNNEST`), so the statement is the same for
                // every size and stays prepared; `id = ANY($1)` lets the planner find the rows
                // by primary key (joined with the list alone it scanned the whole table).
                let sql = format!(
                    "WITH v(id, reason, next_at, delivered_at, state) AS (
                         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])),
                     u AS ({}),
                     a(id, started_at, duration_ms, outcome, detail) AS (
                         SELECT * FROM UNNEST($1::text[], $6::timestamptz[], $7::bigint[], $8::text[], $9::text[]))
                     {} RETURNING delivery_id",
                    apply_attempts(" AND deliveries.id = ANY($1)"),
                    insert_attempts_from("u")
                );
                let mut tx = if chunks.len() > 1 { Some(pool.begin_write().await?) } else { None };
                for chunk in chunks {
                    let query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql.clone()))
                        .bind(chunk.iter().map(|c| c.id.clone()).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.reason.clone()).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.next_at).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.delivered_at).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.state).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.started).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.duration_ms).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.outcome).collect::<Vec<_>>())
                        .bind(chunk.iter().map(|c| c.detail.clone()).collect::<Vec<_>>());
                    let recorded = match tx.as_mut() {
                        Some(tx) => query.fetch_all(&mut **tx).await?,
                        None => query.fetch_all(pool).await?,
                    };
                    for (id,) in recorded {
                        *found.entry(id).or_default() += 1;
                    }
                }
                if let Some(tx) = tx {
                    tx.commit().await?;
                }
            }
        }
        Ok(order
            .into_iter()
            .map(|id| match found.get_mut(&id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Ok(())
                }
                _ => Err(not_found("delivery", id)),
            })
            .collect())
    }

    pub async fn get_delivery(&self, id: &DeliveryId) -> Result<Delivery> {
        dispatch!(self, pool => {
            let row: Option<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1")))
                .bind(id.as_str()).fetch_optional(pool).await?;
            row.ok_or_else(|| not_found("delivery", id))?.into_delivery()
        })
    }

    pub async fn deliveries_for_bulletin(&self, id: &BulletinId) -> Result<Vec<Delivery>> {
        dispatch!(self, pool => {
            let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE bulletin_id = $1 ORDER BY channel, address, id"
            )))
            .bind(id.as_str()).fetch_all(pool).await?;
            rows.into_iter().map(DeliveryRow::into_delivery).collect()
        })
    }

    /// Count of a bulletin's deliveries in each state (every state present, zero if none).
    pub async fn delivery_counts(&self, id: &BulletinId) -> Result<BTreeMap<String, i64>> {
        dispatch!(self, pool => {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, COUNT(*) FROM deliveries WHERE bulletin_id = $1 GROUP BY state",
            )
            .bind(id.as_str()).fetch_all(pool).await?;
            let mut out: BTreeMap<String, i64> =
                DeliveryState::ALL.iter().map(|s| (s.as_str().to_owned(), 0)).collect();
            out.extend(rows);
            Ok(out)
        })
    }

    /// Whether any of a bulletin's deliveries is still pending (one index probe: cheap enough
    /// to ask often, unlike [`Store::delivery_counts`]).
    pub async fn any_pending(&self, id: &BulletinId) -> Result<bool> {
        dispatch!(self, pool => {
            let row: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM deliveries WHERE bulletin_id = $1 AND state = 'pending' LIMIT 1",
            )
            .bind(id.as_str()).fetch_optional(pool).await?;
            Ok(row.is_some())
        })
    }

    /// How many attempts are on record for a bulletin's deliveries.
    pub async fn attempt_count(&self, id: &BulletinId) -> Result<i64> {
        dispatch!(self, pool => {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.bulletin_id = $1",
            )
            .bind(id.as_str()).fetch_one(pool).await?;
            Ok(n)
        })
    }

    pub async fn delivery_attempts(&self, id: &DeliveryId) -> Result<Vec<Attempt>> {
        dispatch!(self, pool => {
            let rows: Vec<(i32, DateTime<Utc>, i64, String, String)> = sqlx::query_as(
                "SELECT attempt, started_at, duration_ms, outcome, detail FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id",
            )
            .bind(id.as_str()).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(attempt, started_at, duration_ms, outcome, detail)| Attempt { attempt, started_at, duration_ms, outcome, detail }).collect())
        })
    }
}

/// Advisories with the assessment of their latest revision and that revision's latest
/// override, if any. Append a `WHERE`.
const CANDIDATES: &str = "SELECT a.id, a.revision, a.content, a.first_seen, a.last_changed,
        s.relevant, s.threat_level, s.score, s.reasons,
        o.relevant AS override_relevant, o.threat_level AS override_level, o.reason AS override_reason,
        an.name AS override_by, o.at AS override_at
     FROM advisories a
     JOIN assessments s ON s.advisory_id = a.id AND s.advisory_revision = a.revision
     LEFT JOIN assessment_overrides o ON o.advisory_id = a.id AND o.advisory_revision = a.revision
          AND NOT EXISTS (SELECT 1 FROM assessment_overrides o2
                          WHERE o2.advisory_id = o.advisory_id AND o2.advisory_revision = o.advisory_revision
                            AND o2.id > o.id)
     LEFT JOIN analysts an ON an.id = o.analyst_id";

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn pool_skip_locked<P: Pool>(_: &P) -> &'static str {
    P::SKIP_LOCKED
}

fn parse_id<T: FromStr<Err = broadcast_core::IdError>>(s: &str) -> Result<T> {
    s.parse().map_err(|e: broadcast_core::IdError| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("bad JSON column: {e}")))
}

/// One attempt's effect on its delivery row, and the attempt row itself.
struct AttemptChange {
    id: String,
    reason: Option<String>,
    next_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    state: &'static str,
    started: DateTime<Utc>,
    duration_ms: i64,
    outcome: &'static str,
    detail: String,
}

impl AttemptChange {
    fn new(id: &DeliveryId, rec: &AttemptRecord) -> AttemptChange {
        let started = db_time(rec.started_at);
        let (state, reason, next_at, delivered_at, outcome) = match &rec.outcome {
            AttemptOutcome::Delivered => (
                DeliveryState::Delivered,
                None,
                None,
                Some(started + chrono::Duration::milliseconds(rec.duration_ms)),
                "delivered",
            ),
            AttemptOutcome::Retry { at, error } => {
                (DeliveryState::Pending, Some(error.clone()), Some(db_time(*at)), None, "retry")
            }
            AttemptOutcome::Failed { error } => {
                (DeliveryState::Failed, Some(error.clone()), None, None, "failed")
            }
        };
        AttemptChange {
            id: id.to_string(),
            reason,
            next_at,
            delivered_at,
            state: state.as_str(),
            started,
            duration_ms: rec.duration_ms,
            outcome,
            detail: rec.detail.clone(),
        }
    }

    /// A `VALUES` list of the chunk as a named CTE (SQLite): `v(…)`, each delivery's new state
    /// (for [`apply_attempts`]), or `a(…)`, the attempt rows (for [`insert_attempts_from`]).
    /// `rows` ≥ the chunk's length: the list is padded with rows that match nothing.
    fn push_values(
        qb: &mut QueryBuilder<sqlx::Sqlite>,
        attempt_rows: bool,
        chunk: &[AttemptChange],
        rows: usize,
    ) {
        qb.push(if attempt_rows {
            "a(id, started_at, duration_ms, outcome, detail) AS (VALUES "
        } else {
            "v(id, reason, next_at, delivered_at, state) AS (VALUES "
        });
        for (i, c) in chunk.iter().enumerate() {
            qb.push(if i == 0 { "(" } else { ", (" }).push_bind(c.id.clone()).push(", ");
            if attempt_rows {
                qb.push_bind(c.started).push(", ").push_bind(c.duration_ms).push(", ");
                qb.push_bind(c.outcome).push(", ").push_bind(c.detail.clone()).push(")");
            } else {
                qb.push_bind(c.reason.clone()).push(", ").push_bind(c.next_at).push(", ");
                qb.push_bind(c.delivered_at).push(", ").push_bind(c.state).push(")");
            }
        }
        for _ in chunk.len()..rows {
            qb.push(", (NULL, NULL, NULL, NULL, NULL)");
        }
        qb.push(")");
    }
}

/// Moves each delivery of `v` on and returns the id and new attempt count of each row found;
/// `also` is added to the row match (PostgreSQL passes a primary-key filter, see
/// `record_attempts`).
/// A row cancelled or suppressed while its attempt was in flight keeps that state (SET
/// expressions read the row as it was); the attempt is still counted and put on record.
fn apply_attempts(also: &str) -> String {
    format!(
        "UPDATE deliveries SET attempts = deliveries.attempts + 1,
        reason = CASE WHEN deliveries.state = 'pending' THEN v.reason ELSE deliveries.reason END,
        next_attempt_at = CASE WHEN deliveries.state = 'pending' THEN COALESCE(v.next_at, deliveries.next_attempt_at) ELSE deliveries.next_attempt_at END,
        delivered_at = CASE WHEN deliveries.state = 'pending' THEN v.delivered_at ELSE deliveries.delivered_at END,
        lease_until = CASE WHEN deliveries.state = 'pending' THEN NULL ELSE deliveries.lease_until END,
        leased_by = CASE WHEN deliveries.state = 'pending' THEN NULL ELSE deliveries.leased_by END,
        state = CASE WHEN deliveries.state = 'pending' THEN v.state ELSE deliveries.state END
     FROM v WHERE deliveries.id = v.id{also} RETURNING deliveries.id, deliveries.attempts"
    )
}

/// `SELECT * FROM {table} WHERE id IN (…)` and the ids to bind, padded as [`padded_len`] says
/// (`ids` must not be empty).
fn select_by_ids<'a>(
    table: &str,
    ids: impl ExactSizeIterator<Item = &'a str> + Clone,
) -> (String, Vec<&'a str>) {
    let n = padded_len(ids.len());
    let first = ids.clone().next().unwrap_or_default();
    let ids: Vec<&str> = ids.chain(std::iter::repeat(first)).take(n).collect();
    (format!("SELECT * FROM {table} WHERE id IN ({})", placeholders(n)), ids)
}

/// How many values an `IN (…)` list of `n` ids is given: up to 1,024 the next power of two
/// (padded by repeating an id, which matches nothing more), so the statement's text repeats
/// and stays prepared instead of being parsed afresh for each batch size.
fn padded_len(n: usize) -> usize {
    if n <= 1024 { n.next_power_of_two() } else { n }
}

/// Inserts the attempt rows of `a`, numbered from `rows` — the deliveries just updated (the
/// table on SQLite, the UPDATE's result on PostgreSQL) — skipping deliveries that do not exist.
fn insert_attempts_from(rows: &str) -> String {
    format!(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, outcome, detail)
         SELECT a.id, d.attempts, a.started_at, a.duration_ms, a.outcome, a.detail FROM a, {rows} d WHERE d.id = a.id"
    )
}

/// The head of both backends' outbox inserts: the columns a publish writes.
const INSERT_OUTBOX: &str = "INSERT INTO deliveries (id, bulletin_id, org_id, channel, recipient_id, address,
                         state, reason, attempts, next_attempt_at, created_at, digest_at)";

/// Writes a publish's outbox rows, in the way each backend does fastest.
trait InsertOutbox {
    async fn insert_outbox(
        &mut self,
        bulletin: &str,
        rows: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error>;
}

impl InsertOutbox for sqlx::SqliteConnection {
    /// Multi-row `INSERT … VALUES` in chunks of 500.
    async fn insert_outbox(
        &mut self,
        bulletin: &str,
        rows: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(500) {
            let mut qb = QueryBuilder::new(format!("{INSERT_OUTBOX} "));
            qb.push_values(chunk, |mut row, d| {
                row.push_bind(d.id.clone())
                    .push_bind(bulletin.to_owned())
                    .push_bind(d.org_id.clone())
                    .push_bind(d.channel.as_str())
                    .push_bind(d.recipient_id.clone())
                    .push_bind(d.address.clone())
                    .push_bind(d.state.as_str())
                    .push_bind(d.reason.clone())
                    .push_bind(0i32)
                    .push_bind(d.digest_at.unwrap_or(now))
                    .push_bind(now)
                    .push_bind(d.digest_at);
            });
            qb.build().execute(&mut *self).await?;
        }
        Ok(())
    }
}

impl InsertOutbox for sqlx::PgConnection {
    /// A column array per field (`UNNEST`), 10,000 rows a statement (so the arrays stay a few
    /// MB): PostgreSQL took 48 µs a row with chunks of multi-row `VALUES` (each chunk 6,000
    /// parameters to bind and plan).
    async fn insert_outbox(
        &mut self,
        bulletin: &str,
        rows: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        for rows in rows.chunks(10_000) {
            let column = |f: fn(&NewDelivery) -> String| rows.iter().map(f).collect::<Vec<String>>();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{INSERT_OUTBOX} SELECT id, $1, org_id, channel, recipient_id, address, state, reason, 0, COALESCE(digest_at, $2), $2, digest_at
                 FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[])
                      AS t (id, org_id, channel, recipient_id, address, state, reason, digest_at)"
            )))
            .bind(bulletin)
            .bind(now)
            .bind(column(|d| d.id.clone()))
            .bind(column(|d| d.org_id.clone()))
            .bind(column(|d| d.channel.as_str().to_owned()))
            .bind(column(|d| d.recipient_id.clone()))
            .bind(column(|d| d.address.clone()))
            .bind(column(|d| d.state.as_str().to_owned()))
            .bind(rows.iter().map(|d| d.reason.clone()).collect::<Vec<Option<String>>>())
            .bind(rows.iter().map(|d| d.digest_at).collect::<Vec<Option<DateTime<Utc>>>>())
            .execute(&mut *self)
            .await?;
        }
        Ok(())
    }
}

/// One outbox row to be written by a publish.
struct NewDelivery {
    id: String,
    org_id: String,
    channel: ChannelKind,
    recipient_id: String,
    address: String,
    state: DeliveryState,
    reason: Option<String>,
    digest_at: Option<DateTime<Utc>>,
}

/// Decides every recipient of a bulletin. Recipients that must not receive it get a row
/// too, in state `suppressed` with the reason, so the record of who was and was not sent a
/// bulletin is complete.
fn plan_fan_out(
    b: &Bulletin,
    orgs: Vec<OrgRow>,
    contacts: &[(String, String, String, bool, Option<String>)],
    endpoints: &[(String, String, String, bool)],
    now: DateTime<Utc>,
) -> Result<Vec<NewDelivery>> {
    let tlp = b.content.tlp;
    let level = b.content.threat_level;
    let mut rows: Vec<NewDelivery> = Vec::with_capacity(contacts.len() + endpoints.len());
    // Each organisation's contacts and endpoints, found once (not a scan of all per organisation).
    let mut contacts_of: HashMap<&str, Vec<_>> = HashMap::new();
    for c in contacts {
        contacts_of.entry(c.1.as_str()).or_default().push(c);
    }
    let mut endpoints_of: HashMap<&str, Vec<_>> = HashMap::new();
    for e in endpoints {
        endpoints_of.entry(e.1.as_str()).or_default().push(e);
    }
    for org in orgs {
        let org = org.into_org()?;
        let org_block = if !tlp.may_go_to(org.tlp_clearance) {
            Some(format!("organisation not cleared for {tlp}"))
        } else if level < org.min_threat_level {
            Some(format!("below the organisation's minimum threat level ({})", org.min_threat_level))
        } else if !org.interested_in(&b.content) {
            Some(format!("outside the organisation's interests ({})", org.interests.join(", ")))
        } else {
            None
        };
        let digest_at = org.next_digest_after(now);
        let mut push = |channel, recipient_id: &String, address: &String, reason: Option<String>| {
            rows.push(NewDelivery {
                // Emails of a digest organisation wait for its next digest; webhooks never wait.
                digest_at: digest_at.filter(|_| channel == ChannelKind::Email && reason.is_none()),
                id: DeliveryId::from_suffix(&suffix()).to_string(),
                org_id: org.id.to_string(),
                channel,
                recipient_id: recipient_id.clone(),
                address: address.clone(),
                state: if reason.is_some() { DeliveryState::Suppressed } else { DeliveryState::Pending },
                reason,
            })
        };
        for (cid, _, email, unsubscribed, bounced) in contacts_of.remove(org.id.as_str()).unwrap_or_default()
        {
            let reason = org_block
                .clone()
                .or_else(|| unsubscribed.then(|| "unsubscribed".to_owned()))
                .or_else(|| bounced.clone());
            push(ChannelKind::Email, cid, email, reason);
        }
        for (eid, _, url, enabled) in endpoints_of.remove(org.id.as_str()).unwrap_or_default() {
            let reason = org_block.clone().or_else(|| (!enabled).then(|| "endpoint disabled".to_owned()));
            push(ChannelKind::Webhook, eid, url, reason);
        }
    }
    Ok(rows)
}
