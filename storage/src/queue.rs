//! The job queue: claiming with a lease, renewing it, and the state transitions of a job.
//!
//! ```text
//! queued ──claim──▶ running ──▶ completed | cancelled
//!    ▲                 │  ├──▶ failed (attempts exhausted)
//!    └──── retry ──────┤  └──▶ interrupted (owner restarted) ──claim──▶ running
//!                      └── lease expired: claimed by another node ──▶ running
//! ```
//!
//! Invariants:
//! * only the owner of a running job (`owner_node`) may renew, checkpoint or finish it; a node
//!   whose lease was taken over gets `LeaseLost` and must stop its worker;
//! * claiming happens in one write transaction: on PostgreSQL the chosen candidate is locked
//!   with `FOR UPDATE SKIP LOCKED` and re-checked, so concurrent claimants never get the same
//!   job and never wait on each other; on SQLite `BEGIN IMMEDIATE` makes the claimant the
//!   single writer;
//! * a job that hashes to this node (rendezvous over the live nodes) is preferred over the
//!   others; among either group the order is priority, then age.
//! * a job that runs out of attempts ends `failed` with the reason of every attempt.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Backend, with_pool};
use crate::jobs::{AttemptError, JobRecord, JobRepository, JobStatus};
use crate::models::now_micros;

/// How a run ended, as the owner reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Completed,
    Cancelled,
    /// The attempt failed; the job is retried while attempts remain.
    Failed {
        error: String,
    },
    /// The attempt failed in a way another attempt would repeat (the training diverged): the
    /// job fails now, whatever attempts remain.
    FailedForGood {
        error: String,
    },
    /// The owner died while running it (found when the owner restarts): the job becomes
    /// `interrupted`, claimable again, while attempts remain.
    Interrupted {
        reason: String,
    },
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed {
        cancel_requested: bool,
    },
    /// Another node owns the job now (or it ended): stop working on it.
    LeaseLost,
}

/// The rendezvous (highest random weight) owner of `job_id` among `nodes`: every node computes
/// the same answer without coordination, and removing a node only moves that node's jobs.
pub fn rendezvous_owner(job_id: Uuid, nodes: &[String]) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|node| fnv1a(job_id.as_bytes(), node.as_bytes()))
        .map(String::as_str)
}

fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain([0xffu8].iter()).chain(b) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const CANDIDATES: i64 = 16;

impl JobRepository {
    /// Claims the next job for `node`: the highest priority, oldest first, among queued jobs and
    /// running jobs whose lease expired, preferring one that rendezvous-hashes to `node` among
    /// `live_nodes`. The claimed job is `running`, owned by `node` until `lease_until`, with
    /// its attempt counted.
    pub async fn claim_next(
        &self,
        node: &str,
        live_nodes: &[String],
        lease_until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StorageError> {
        let now = now_micros();
        let claimed: Result<Option<Uuid>, sqlx::Error> = with_pool!(self.database(), |pool| {
            async {
            let mut tx = pool.begin_write().await?;
            // Read the candidates without locking them, then lock one at a time: locking the
            // whole candidate list would make concurrent claimants skip every job the first
            // one looked at.
            let candidates: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT id FROM jobs \
                 WHERE status IN ('queued', 'interrupted') OR (status = 'running' AND lease_expires_at < $1) \
                 ORDER BY priority DESC, created_at, id LIMIT $2",
            )
            .bind(now)
            .bind(CANDIDATES)
            .fetch_all(&mut *tx)
            .await?;
            let mine = |id: &Uuid| rendezvous_owner(*id, live_nodes).is_none_or(|owner| owner == node);
            let ordered = candidates
                .iter()
                .map(|(id,)| *id)
                .filter(|id| mine(id))
                .chain(candidates.iter().map(|(id,)| *id).filter(|id| !mine(id)));
            let lock = pool.sql(
                "SELECT status, attempts, max_attempts, cancel_requested FROM jobs WHERE id = $1 \
                 AND (status IN ('queued', 'interrupted') OR (status = 'running' AND lease_expires_at < $2))",
                "SELECT status, attempts, max_attempts, cancel_requested FROM jobs WHERE id = $1 \
                 AND (status IN ('queued', 'interrupted') OR (status = 'running' AND lease_expires_at < $2)) \
                 FOR UPDATE SKIP LOCKED",
            );
            let mut chosen = None;
            for id in ordered {
                let row: Option<(String, i64, i64, bool)> =
                    sqlx::query_as(lock).bind(id).bind(now).fetch_optional(&mut *tx).await?;
                let Some((status, attempts, max_attempts, cancel_requested)) = row else {
                    continue; // taken by a concurrent claimant
                };
                // A job whose owner vanished is settled here instead of being run again.
                if status == "running" && cancel_requested {
                    sqlx::query(
                        "UPDATE jobs SET status = 'cancelled', owner_node = NULL, \
                         lease_expires_at = NULL, finished_at = $2, updated_at = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                if attempts >= max_attempts {
                    sqlx::query(
                        "UPDATE jobs SET status = 'failed', owner_node = NULL, lease_expires_at = NULL, \
                         error = $2, finished_at = $3, updated_at = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(format!(
                        "attempts exhausted ({attempts} of {max_attempts}); the last owner stopped renewing its lease"
                    ))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                sqlx::query(
                    "UPDATE jobs SET status = 'running', owner_node = $2, lease_expires_at = $3, \
                     attempts = attempts + 1, cancel_requested = FALSE, \
                     started_at = COALESCE(started_at, $4), updated_at = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(node)
                .bind(lease_until)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                chosen = Some(id);
                break;
            }
            tx.commit().await?;
            Ok(chosen)
        }
        .await
        });
        match claimed.map_err(|e| self.database().error(e))? {
            Some(id) => self.get(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// Extends `node`'s lease on a running job, and says whether a cancel was requested.
    pub async fn renew_lease(
        &self,
        id: Uuid,
        node: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Renewal, StorageError> {
        let now = now_micros();
        let row: Result<Option<(bool,)>, sqlx::Error> = with_pool!(self.database(), |pool| {
            sqlx::query_as(
                "UPDATE jobs SET lease_expires_at = $3, updated_at = $4 \
                 WHERE id = $1 AND owner_node = $2 AND status = 'running' RETURNING cancel_requested",
            )
            .bind(id)
            .bind(node)
            .bind(lease_until)
            .bind(now)
            .fetch_optional(pool)
            .await
        });
        Ok(match row.map_err(|e| self.database().error(e))? {
            Some((cancel_requested,)) => Renewal::Renewed { cancel_requested },
            None => Renewal::LeaseLost,
        })
    }

    /// Records the owner's latest checkpoint and progress.
    pub async fn record_checkpoint(
        &self,
        id: Uuid,
        node: &str,
        path: &str,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let result: Result<u64, sqlx::Error> = with_pool!(self.database(), |pool| {
            sqlx::query(
                "UPDATE jobs SET last_checkpoint_path = $3, updated_at = $4 \
                 WHERE id = $1 AND owner_node = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(path)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        Ok(result.map_err(|e| self.database().error(e))? == 1)
    }

    pub async fn record_progress(
        &self,
        id: Uuid,
        node: &str,
        progress: &serde_json::Value,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let result: Result<u64, sqlx::Error> = with_pool!(self.database(), |pool| {
            sqlx::query(
                "UPDATE jobs SET progress = $3, updated_at = $4 \
                 WHERE id = $1 AND owner_node = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(Json(progress))
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        Ok(result.map_err(|e| self.database().error(e))? == 1)
    }

    /// Ends `node`'s attempt at a running job. A failure goes back to the queue while attempts
    /// remain and ends `failed`, with every attempt's reason, when they are exhausted.
    pub async fn finish(
        &self,
        id: Uuid,
        node: &str,
        finish: Finish,
    ) -> Result<JobRecord, StorageError> {
        let job = self.get(id).await?;
        if job.status != JobStatus::Running || job.owner_node.as_deref() != Some(node) {
            return Err(StorageError::invalid(
                "owner_node",
                format!("{node} does not own job {id}"),
            ));
        }
        let now = now_micros();
        let mut attempt_errors = job.attempt_errors.clone();
        let (status, error) = match &finish {
            Finish::Completed => (JobStatus::Completed, None),
            Finish::Cancelled => (JobStatus::Cancelled, None),
            Finish::Failed { error: reason }
            | Finish::FailedForGood { error: reason }
            | Finish::Interrupted { reason } => {
                attempt_errors.push(AttemptError {
                    attempt: job.attempts,
                    node: Some(node.to_string()),
                    error: reason.clone(),
                    at: now,
                });
                let retry = if matches!(finish, Finish::Interrupted { .. }) {
                    JobStatus::Interrupted
                } else {
                    JobStatus::Queued
                };
                let for_good = matches!(finish, Finish::FailedForGood { .. });
                if job.attempts < job.max_attempts && !job.cancel_requested && !for_good {
                    (retry, Some(reason.clone()))
                } else {
                    (JobStatus::Failed, Some(summarise(&attempt_errors)))
                }
            }
        };
        let finished_at = status.is_terminal().then_some(now);
        let result: Result<u64, sqlx::Error> = with_pool!(self.database(), |pool| {
            sqlx::query(
                "UPDATE jobs SET status = $3, owner_node = NULL, lease_expires_at = NULL, error = $4, \
                 attempt_errors = $5, finished_at = $6, updated_at = $7 \
                 WHERE id = $1 AND owner_node = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(status.as_str())
            .bind(error)
            .bind(Json(&attempt_errors))
            .bind(finished_at)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        });
        if result.map_err(|e| self.database().error(e))? != 1 {
            return Err(StorageError::invalid(
                "owner_node",
                format!("{node} lost job {id} while finishing it"),
            ));
        }
        self.get(id).await
    }

    /// Records a cancel request. A queued job is cancelled at once (it never starts); a running
    /// one is flagged and its owner stops it at the next step; a finished one is left alone.
    pub async fn request_cancel(&self, id: Uuid) -> Result<JobRecord, StorageError> {
        let now = now_micros();
        let result: Result<u64, sqlx::Error> = with_pool!(self.database(), |pool| {
            async {
            let queued = sqlx::query(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = TRUE, finished_at = $2, \
                 updated_at = $2 WHERE id = $1 AND status IN ('queued', 'interrupted')",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            let running = sqlx::query(
                "UPDATE jobs SET cancel_requested = TRUE, updated_at = $2 WHERE id = $1 AND status = 'running'",
            )
            .bind(id)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(queued + running)
        }
        .await
        });
        result.map_err(|e| self.database().error(e))?;
        self.get(id).await
    }

    /// On boot: the jobs `node` was running when it died become `interrupted` — claimable, with
    /// their checkpoints — so they resume. The interrupted attempt is recorded and counts.
    pub async fn reclaim_owned(&self, node: &str) -> Result<Vec<Uuid>, StorageError> {
        let owned: Result<Vec<(Uuid,)>, sqlx::Error> = with_pool!(self.database(), |pool| {
            sqlx::query_as("SELECT id FROM jobs WHERE owner_node = $1 AND status = 'running'")
                .bind(node)
                .fetch_all(pool)
                .await
        });
        let owned = owned.map_err(|e| self.database().error(e))?;
        let mut reclaimed = Vec::new();
        for (id,) in owned {
            // Through `finish`, so an attempt lost to a crash counts like any failed attempt.
            let job = self
                .finish(
                    id,
                    node,
                    Finish::Interrupted {
                        reason: "interrupted: the node stopped while running it".into(),
                    },
                )
                .await?;
            if job.status == JobStatus::Interrupted {
                reclaimed.push(id);
            }
        }
        Ok(reclaimed)
    }
}

fn summarise(errors: &[AttemptError]) -> String {
    errors
        .iter()
        .map(|e| format!("attempt {}: {}", e.attempt, e.error))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_removed_nodes_jobs() {
        let nodes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let jobs: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
        let before: Vec<&str> = jobs
            .iter()
            .map(|j| rendezvous_owner(*j, &nodes).unwrap())
            .collect();
        for owner in ["a", "b", "c"] {
            assert!(
                before.iter().filter(|o| **o == owner).count() > 30,
                "{owner} gets a fair share"
            );
        }
        let without_b: Vec<String> = vec!["a".into(), "c".into()];
        for (job, owner) in jobs.iter().zip(&before) {
            let after = rendezvous_owner(*job, &without_b).unwrap();
            if *owner != "b" {
                assert_eq!(after, *owner, "jobs of the remaining nodes stay put");
            }
        }
        assert_eq!(
            rendezvous_owner(jobs[0], &["solo".to_string()]),
            Some("solo")
        );
        assert_eq!(rendezvous_owner(jobs[0], &[]), None);
    }
}
