//! XEP-0012 last activity written behind: a logout records the time in
//! memory and a background task writes what accumulated every
//! `FLUSH_EVERY` in one statement, so a logout costs no database round
//! trip of its own. Reads see pending records first. What is pending when
//! the process dies is lost (last-seen times, never messages); a clean
//! shutdown writes it (`Storage::flush`).

use super::{LastActivityStore, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(500);

type Pending = HashMap<String, (i64, String)>;

pub struct WriteBehindLast {
    inner: Arc<dyn LastActivityStore>,
    pending: Mutex<Pending>,
    /// The batch being written: still what reads must see until it is stored.
    in_flight: Mutex<Arc<Pending>>,
    /// Serialises flushes, so an older batch never overwrites a newer one.
    flushing: tokio::sync::Mutex<()>,
}

impl WriteBehindLast {
    /// The store, and the task that flushes it (it holds only a weak reference).
    pub fn spawn(inner: Arc<dyn LastActivityStore>) -> Arc<WriteBehindLast> {
        let me = Arc::new(WriteBehindLast {
            inner,
            pending: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(Arc::new(HashMap::new())),
            flushing: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                me.flush_pending().await;
            }
        });
        me
    }

    async fn flush_pending(&self) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch = {
            let mut pending = self.pending.lock().unwrap();
            if pending.is_empty() {
                return;
            }
            let batch = Arc::new(std::mem::take(&mut *pending));
            *self.in_flight.lock().unwrap() = batch.clone();
            batch
        };
        let rows: Vec<(String, i64, String)> = batch
            .iter()
            .map(|(o, (t, s))| (o.clone(), *t, s.clone()))
            .collect();
        let written = self.inner.set_last_activities(&rows).await;
        *self.in_flight.lock().unwrap() = Arc::new(HashMap::new());
        if let Err(e) = written {
            tracing::warn!(error = %e, count = rows.len(), "saving last activity failed");
            // Keep them for the next attempt, unless newer records arrived.
            let mut pending = self.pending.lock().unwrap();
            for (o, t, s) in rows {
                pending.entry(o).or_insert((t, s));
            }
        }
    }
}

#[async_trait]
impl LastActivityStore for WriteBehindLast {
    async fn set_last_activity(&self, owner: &str, seen_at: i64, status: &str) -> Result<()> {
        self.pending
            .lock()
            .unwrap()
            .insert(owner.to_string(), (seen_at, status.to_string()));
        Ok(())
    }

    async fn last_activity(&self, owner: &str) -> Result<Option<(i64, String)>> {
        if let Some(p) = self.pending.lock().unwrap().get(owner) {
            return Ok(Some(p.clone()));
        }
        if let Some(p) = self.in_flight.lock().unwrap().get(owner) {
            return Ok(Some(p.clone()));
        }
        self.inner.last_activity(owner).await
    }

    async fn set_last_activities(&self, rows: &[(String, i64, String)]) -> Result<()> {
        let mut pending = self.pending.lock().unwrap();
        for (o, t, s) in rows {
            pending.insert(o.clone(), (*t, s.clone()));
        }
        Ok(())
    }

    fn forget(&self, owner: &str) {
        self.pending.lock().unwrap().remove(owner);
    }

    async fn flush(&self) {
        self.flush_pending().await;
    }
}
