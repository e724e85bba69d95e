//! The checkpointer: copies committed pages from the WAL into the database file on its own
//! connection, beside the writer, whenever the writer has committed since the last copy.
//! The writer's own checkpoints (which hold up the group that triggers them) then find
//! little left to copy; measured with the ingest bench, a pause between copies let the
//! writer's checkpoints grow and doubled the p99 latency.

use sqlx::{Connection, SqliteConnection};
use tokio::sync::mpsc;

/// Runs until the writer has ended. `committed` carries a signal after the writer's commits.
pub(super) async fn run(mut conn: SqliteConnection, mut committed: mpsc::Receiver<()>) {
    while committed.recv().await.is_some() {
        // PASSIVE never waits for the writer or readers; what it cannot copy now, a later one will.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the checkpoint connection failed");
    }
}
