//! The job queue against both databases: priorities, leases, take-over, cancel, attempts.

mod common;

use std::path::PathBuf;

use chrono::{Duration, Utc};
use grokforge_storage::queue::{Finish, Renewal};
use grokforge_storage::{Database, JobRepository, JobStatus, NewJob};

on_both!(
    claims_follow_priority_then_age,
    a_lease_blocks_others_until_it_expires_then_the_job_is_taken_over,
    cancel_of_a_queued_job_never_starts_it_and_of_a_running_one_is_flagged,
    failures_are_retried_until_attempts_run_out_with_every_reason,
    a_restarted_owner_reclaims_its_running_jobs,
    concurrent_claimants_never_share_a_job,
);

fn job(priority: i64, max_attempts: u32) -> NewJob {
    NewJob {
        phase: "cognate".into(),
        spec: serde_json::json!({}),
        priority,
        max_attempts,
    }
}

fn nodes(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn soon() -> chrono::DateTime<Utc> {
    Utc::now() + Duration::seconds(60)
}

async fn claims_follow_priority_then_age(db: Database, _: PathBuf) {
    let jobs = JobRepository::new(db);
    let low_old = jobs.insert(job(0, 3)).await.unwrap();
    let high = jobs.insert(job(5, 3)).await.unwrap();
    let low_new = jobs.insert(job(0, 3)).await.unwrap();
    let me = nodes(&["a"]);
    let mut order = Vec::new();
    while let Some(claimed) = jobs.claim_next("a", &me, soon()).await.unwrap() {
        assert_eq!(claimed.status, JobStatus::Running);
        assert_eq!(claimed.owner_node.as_deref(), Some("a"));
        assert_eq!(claimed.attempts, 1);
        order.push(claimed.id);
    }
    assert_eq!(order, [high.id, low_old.id, low_new.id]);
}

async fn a_lease_blocks_others_until_it_expires_then_the_job_is_taken_over(
    db: Database,
    _: PathBuf,
) {
    let jobs = JobRepository::new(db);
    let queued = jobs.insert(job(0, 3)).await.unwrap();
    let both = nodes(&["a", "b"]);
    let claimed = jobs.claim_next("a", &both, soon()).await.unwrap().unwrap();
    assert_eq!(claimed.id, queued.id);
    assert!(
        jobs.claim_next("b", &both, soon()).await.unwrap().is_none(),
        "a live lease is respected"
    );
    assert_eq!(
        jobs.renew_lease(queued.id, "a", soon()).await.unwrap(),
        Renewal::Renewed {
            cancel_requested: false
        }
    );
    assert!(
        jobs.record_checkpoint(queued.id, "a", "/data/jobs/x/variant-0/checkpoint.gfck")
            .await
            .unwrap()
    );

    // a stops renewing: its lease runs out and b takes the job over, checkpoint included.
    let expired = Utc::now() - Duration::seconds(1);
    assert_eq!(
        jobs.renew_lease(queued.id, "a", expired).await.unwrap(),
        Renewal::Renewed {
            cancel_requested: false
        }
    );
    let taken = jobs
        .claim_next("b", &both, soon())
        .await
        .unwrap()
        .expect("expired lease is claimable");
    assert_eq!(taken.id, queued.id);
    assert_eq!(taken.owner_node.as_deref(), Some("b"));
    assert_eq!(taken.attempts, 2);
    assert_eq!(
        taken.last_checkpoint_path.as_deref(),
        Some("/data/jobs/x/variant-0/checkpoint.gfck")
    );
    assert_eq!(
        jobs.renew_lease(queued.id, "a", soon()).await.unwrap(),
        Renewal::LeaseLost
    );
    assert!(
        jobs.finish(queued.id, "a", Finish::Completed)
            .await
            .is_err(),
        "a no longer owns it"
    );
    let done = jobs
        .finish(queued.id, "b", Finish::Completed)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert!(done.finished_at.is_some());
}

async fn cancel_of_a_queued_job_never_starts_it_and_of_a_running_one_is_flagged(
    db: Database,
    _: PathBuf,
) {
    let jobs = JobRepository::new(db);
    let me = nodes(&["a"]);
    let queued = jobs.insert(job(0, 3)).await.unwrap();
    let cancelled = jobs.request_cancel(queued.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(
        jobs.claim_next("a", &me, soon()).await.unwrap().is_none(),
        "a cancelled job never starts"
    );

    let running = jobs.insert(job(0, 3)).await.unwrap();
    jobs.claim_next("a", &me, soon()).await.unwrap().unwrap();
    let flagged = jobs.request_cancel(running.id).await.unwrap();
    assert_eq!(flagged.status, JobStatus::Running);
    assert!(flagged.cancel_requested);
    assert_eq!(
        jobs.renew_lease(running.id, "a", soon()).await.unwrap(),
        Renewal::Renewed {
            cancel_requested: true
        }
    );
    let done = jobs
        .finish(running.id, "a", Finish::Cancelled)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    // Cancelling a finished job changes nothing.
    assert_eq!(
        jobs.request_cancel(running.id).await.unwrap().status,
        JobStatus::Cancelled
    );
}

async fn failures_are_retried_until_attempts_run_out_with_every_reason(db: Database, _: PathBuf) {
    let jobs = JobRepository::new(db);
    let me = nodes(&["a"]);
    let queued = jobs.insert(job(0, 2)).await.unwrap();
    jobs.claim_next("a", &me, soon()).await.unwrap().unwrap();
    let retried = jobs
        .finish(
            queued.id,
            "a",
            Finish::Failed {
                error: "loss is NaN at step 3".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(retried.status, JobStatus::Queued, "one attempt left");
    jobs.claim_next("a", &me, soon()).await.unwrap().unwrap();
    let failed = jobs
        .finish(
            queued.id,
            "a",
            Finish::Failed {
                error: "out of memory".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.attempt_errors.len(), 2);
    let error = failed.error.unwrap();
    assert!(
        error.contains("attempt 1: loss is NaN at step 3"),
        "{error}"
    );
    assert!(error.contains("attempt 2: out of memory"), "{error}");
    assert!(jobs.claim_next("a", &me, soon()).await.unwrap().is_none());
}

async fn a_restarted_owner_reclaims_its_running_jobs(db: Database, _: PathBuf) {
    let jobs = JobRepository::new(db);
    let me = nodes(&["a"]);
    let queued = jobs.insert(job(0, 3)).await.unwrap();
    jobs.claim_next("a", &me, soon()).await.unwrap().unwrap();
    jobs.record_checkpoint(queued.id, "a", "ckpt")
        .await
        .unwrap();
    assert!(
        jobs.reclaim_owned("b").await.unwrap().is_empty(),
        "only the owner's own jobs"
    );
    assert_eq!(jobs.reclaim_owned("a").await.unwrap(), vec![queued.id]);
    assert_eq!(
        jobs.get(queued.id).await.unwrap().status,
        JobStatus::Interrupted
    );
    let again = jobs.claim_next("a", &me, soon()).await.unwrap().unwrap();
    assert_eq!(again.id, queued.id);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.last_checkpoint_path.as_deref(), Some("ckpt"));
    assert!(again.attempt_errors[0].error.contains("interrupted"));
}

async fn concurrent_claimants_never_share_a_job(db: Database, _: PathBuf) {
    let jobs = JobRepository::new(db);
    for _ in 0..6 {
        jobs.insert(job(0, 3)).await.unwrap();
    }
    let all = nodes(&["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let jobs = jobs.clone();
        let all = all.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("n{i}");
            jobs.claim_next(&node, &all, soon())
                .await
                .unwrap()
                .map(|j| j.id)
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(before, claimed.len(), "no job claimed twice");
    assert_eq!(claimed.len(), 6, "every job claimed by someone");
}
