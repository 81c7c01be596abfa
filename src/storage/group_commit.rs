//! Group commit for archive writes: every caller waits for its rows to be
//! committed (durable before acknowledged), but rows from many sessions that
//! arrive while a write is running share the next transaction.

use super::{ArchiveStore, NewArchived, Result, StorageError};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Rows per commit, about (a job that arrives below it is taken whole).
const MAX_BATCH_ROWS: usize = 4000;

type Job = (
    Vec<NewArchived>,
    oneshot::Sender<std::result::Result<(), String>>,
);

#[derive(Clone)]
pub struct ArchiveWriter {
    tx: mpsc::Sender<Job>,
}

impl ArchiveWriter {
    pub fn spawn(store: Arc<dyn ArchiveStore>) -> (ArchiveWriter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(4096);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut rows = first.0;
                let mut waiters = vec![first.1];
                while rows.len() < MAX_BATCH_ROWS {
                    match rx.try_recv() {
                        Ok((r, w)) => {
                            rows.extend(r);
                            waiters.push(w);
                        }
                        Err(_) => break,
                    }
                }
                let result = store.archive(&rows).await.map_err(|e| e.to_string());
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        (ArchiveWriter { tx }, task)
    }

    /// Store rows; returns once they are committed.
    pub async fn append(&self, rows: Vec<NewArchived>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send((rows, done))
            .await
            .map_err(|_| StorageError::Other("archive writer stopped".into()))?;
        wait.await
            .map_err(|_| StorageError::Other("archive writer stopped".into()))?
            .map_err(StorageError::Other)
    }
}
