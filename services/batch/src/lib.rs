//! The batch side, on DataFusion over Quiver's file stores: SQL access to the stores
//! (`quiver sql`), the backfill and `quiver verify` ([`replay`], [`backfill`], [`verify`]), and
//! point-in-time training sets ([`dataset`]).
//!
//! Tables: `raw_<source>` (the raw store, Arrow IPC, with the `date` directory as a column) and
//! `features_<view>` (the feature log, Parquet, same). A store with no data yet is not
//! registered and is reported as such.

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::DataType;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::options::ArrowReadOptions;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_store::{SegmentStore, Table};

pub mod backfill;
pub mod compact;
pub mod dataset;
pub mod monitor;
pub mod replay;
pub mod verify;

/// Result alias used across `quiver-batch`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the batch side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning or running a query failed (including SQL errors in the user's query).
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// The store directories cannot be listed.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// `--out` names a format we do not write.
    #[error("cannot write `{0}`: use a .parquet or .csv file name")]
    OutputFormat(PathBuf),
    /// Arrow failed on a batch.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Parquet failed writing a file.
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// A feature-log batch could not be built.
    #[error(transparent)]
    Features(#[from] quiver_features::Error),
    /// The online store failed (`--materialize`).
    #[error("redis: {0}")]
    Online(#[from] quiver_online::Error),
    /// The stores are not in the shape a replay needs.
    #[error("{0}")]
    Replay(String),
    /// A request does not fit the schemas or the data (unknown view, missing column, ...).
    #[error("{0}")]
    Invalid(String),
    /// A file outside the stores could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A DataFusion session configured the way Quiver reads its stores.
pub fn session() -> SessionContext {
    // Plain Utf8 strings (not Utf8View) print and export everywhere, and the stores' readers
    // downcast to them.
    let session = SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    SessionContext::new_with_config(session)
}

/// A session with every store that has data registered.
pub struct Stores {
    /// The DataFusion session.
    pub ctx: SessionContext,
    /// Registered tables, with their directories.
    pub tables: Vec<(String, PathBuf)>,
    /// Declared tables that have no data yet.
    pub empty: Vec<String>,
}

/// Registers the raw store of every source and the feature log of every view.
pub async fn open(config: &Config, catalog: &Catalog, views: &ViewCatalog) -> Result<Stores> {
    let ctx = session().enable_url_table();
    let date = || vec![("date".to_string(), DataType::Utf8)];
    let raw = SegmentStore::open(&config.store.dir, Table::Raw)?;
    let offline = SegmentStore::open(&config.store.dir, Table::FeatureLog)?;
    let mut tables = Vec::new();
    let mut empty = Vec::new();
    for source in &catalog.sources {
        let name = format!("raw_{}", source.name);
        let dir = raw.stream_dir(&source.name);
        if !raw.segments(&source.name)?.is_empty() {
            let options = ArrowReadOptions::default().table_partition_cols(date());
            ctx.register_arrow(&name, format!("{}/", dir.display()), options)
                .await?;
            tables.push((name, dir));
        } else {
            empty.push(name);
        }
    }
    for view in &views.views {
        let name = format!("features_{}", view.name);
        let dir = offline.stream_dir(&view.name);
        if !offline.segments(&view.name)?.is_empty() {
            let options = ParquetReadOptions::default().table_partition_cols(date());
            ctx.register_parquet(&name, format!("{}/", dir.display()), options)
                .await?;
            tables.push((name, dir));
        } else {
            empty.push(name);
        }
    }
    // The score store: `scores_<source>`, and `scores` for the first scoreable source.
    let scores = SegmentStore::open(&config.store.dir, Table::Scores)?;
    let mut first = true;
    for source in &catalog.sources {
        if scores.segments(&source.name)?.is_empty() {
            continue;
        }
        let dir = scores.stream_dir(&source.name);
        let mut names = vec![format!("scores_{}", source.name)];
        if first {
            names.push("scores".to_string());
            first = false;
        }
        for name in names {
            let options = ParquetReadOptions::default().table_partition_cols(date());
            ctx.register_parquet(&name, format!("{}/", dir.display()), options)
                .await?;
            tables.push((name, dir.clone()));
        }
    }
    // The monitor's history: `monitor`.
    let monitor = SegmentStore::open(&config.store.dir, Table::Monitor)?;
    let stream = quiver_store::MONITOR_STREAM;
    if monitor.segments(stream)?.is_empty() {
        empty.push("monitor".to_string());
    } else {
        let dir = monitor.stream_dir(stream);
        let options = ParquetReadOptions::default().table_partition_cols(date());
        ctx.register_parquet("monitor", format!("{}/", dir.display()), options)
            .await?;
        tables.push(("monitor".to_string(), dir));
    }
    Ok(Stores { ctx, tables, empty })
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("tables", &self.tables)
            .field("empty", &self.empty)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Plans a query.
    pub async fn sql(&self, query: &str) -> Result<DataFrame> {
        Ok(self.ctx.sql(query).await?)
    }
}

pub use datafusion::arrow::array::RecordBatch;

/// A result as a printable table.
pub fn pretty(batches: &[RecordBatch]) -> Result<impl std::fmt::Display> {
    Ok(
        datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .map_err(DataFusionError::from)?,
    )
}

/// Runs a query to completion.
pub async fn collect(frame: DataFrame) -> Result<Vec<RecordBatch>> {
    Ok(frame.collect().await?)
}

/// Writes a query's result to one `.parquet` or `.csv` file.
pub async fn write(frame: DataFrame, out: &Path) -> Result<()> {
    let options = DataFrameWriteOptions::new().with_single_file_output(true);
    let path = out.display().to_string();
    match out.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            frame.write_parquet(&path, options, None).await?;
        }
        Some("csv") => {
            frame.write_csv(&path, options, None).await?;
        }
        _ => return Err(Error::OutputFormat(out.to_path_buf())),
    }
    Ok(())
}
