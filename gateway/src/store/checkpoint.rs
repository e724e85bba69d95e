//! The checkpointer: copies committed pages from the WAL into the database file on its own
//! connection and thread, beside the writer, whenever the writer has committed since the
//! last copy. The writer's own checkpoints (which hold up the group that triggers them)
//! then find little left to copy; measured with the ingest bench, a pause between copies
//! let the writer's checkpoints grow and doubled the p99 latency.
//!
//! Nothing waits for a checkpoint, so its thread runs at a lower CPU priority than the
//! rest of the gateway: on a busy machine the work a reply waits for goes first. In the
//! Telegram bench at 1,000 replies a second that took about a third off the p99. Starved
//! for long, the checkpointer leaves the WAL to grow until the writer's own checkpoint
//! (`wal_autocheckpoint`) copies it.

use std::path::Path;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::StoreError;

/// The nice value the checkpointer's thread takes (0 is the default, 19 the lowest priority).
/// At 10 the scheduler gives it about a tenth of the share of a default thread.
const NICENESS: libc::c_int = 10;

/// Opens the checkpointer's connection; the database exists and is migrated by now.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs on its own thread until the writer has ended. `committed` carries a signal after
/// the writer's commits.
pub(super) fn run(conn: Connection, mut committed: mpsc::Receiver<()>) {
    lower_this_threads_priority();
    while committed.blocking_recv().is_some() {
        // PASSIVE never waits for the writer or readers; what it cannot copy now, a later one will.
        let checkpoint = conn
            .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")
            .and_then(|mut statement| statement.query_row([], |_| Ok(())));
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the checkpoint connection failed");
    }
}

/// On Linux a nice value belongs to one thread; elsewhere it would slow the whole process,
/// so the checkpointer keeps the default there.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority only reads its integer arguments; `who` 0 is the calling thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the checkpointer's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_checkpointer_thread_alone_runs_at_lower_priority() {
        let nice = || {
            // SAFETY: as above; getpriority only reads its arguments.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        };
        let before = nice();
        let lowered = std::thread::spawn(move || {
            lower_this_threads_priority();
            nice()
        })
        .join()
        .unwrap();
        // Only a privileged process may go back up from a higher nice value it started with.
        assert!(lowered >= NICENESS, "nice {lowered}");
        assert_eq!(nice(), before, "the calling thread keeps its priority");
    }
}
