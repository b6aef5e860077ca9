//! Bookkeeping no request finishes by itself, run by the host on a timer: `chatedge.maintain`
//! (migrations/0006) marks assistant rows still `pending` past the stream deadline `incomplete`,
//! releases their budget holds, and sweeps idle rate-limiter keys. It is plain SQL, so a Spin
//! deployment (which has no timers) schedules the same call with `pg_cron` or any scheduler.

use std::time::Duration;

/// How often the task runs (`CHATEDGE_MAINTENANCE_SECS`, default 60).
fn interval() -> Duration {
    Duration::from_secs(
        std::env::var("CHATEDGE_MAINTENANCE_SECS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(60),
    )
}

/// The running task; stopped when dropped.
pub struct Maintenance {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the task against `db_url`: anything pending for longer than `stream_deadline` plus a
/// margin is stale.
pub fn start(db_url: String, stream_deadline: Duration) -> Maintenance {
    let stale_after = stream_deadline + Duration::from_secs(60);
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match run_once(&db_url, stale_after).await {
                Ok(Some(summary)) => tracing::debug!("maintenance: {summary}"),
                Ok(None) => {}
                Err(e) => tracing::warn!("maintenance: {e:#}"),
            }
        }
    });
    Maintenance { task }
}

/// One pass; `None` when the database has no `chatedge.maintain` (not migrated yet).
pub async fn run_once(db_url: &str, stale_after: Duration) -> anyhow::Result<Option<String>> {
    let client = crate::pgtls::connect(db_url).await?;
    let row = client
        .query_one(
            "select case when to_regprocedure('chatedge.maintain(bigint)') is null then null \
             else chatedge.maintain($1::bigint)::text end",
            &[&(stale_after.as_millis().min(i64::MAX as u128) as i64)],
        )
        .await?;
    Ok(row.get::<_, Option<String>>(0))
}
