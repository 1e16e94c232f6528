//! Alert rules and their state, with Alertmanager's semantics: a condition must hold for its
//! rule's `for` duration before the alert fires; one incident — a rule and its labels — is one
//! alert, however often the condition is seen; it resolves when the condition clears.
//!
//! [`AlertEngine`] is pure: it is fed the bus's events ([`AlertEngine::observe`]) and, at each
//! evaluation, what the node measured ([`Inputs`]), and it returns the transitions
//! ([`Transition::Raised`], [`Transition::Resolved`]). Time comes in as an argument, so the
//! tests drive it without waiting. The monitoring service owns one engine and delivers what it
//! returns.
//!
//! Some conditions are states (a service unhealthy, a job without progress); others are
//! incidents seen once in an event (a job failed for good, a node left): those hold for the
//! rule's `keep_firing_for` after the event, or until the opposite event (the node joined
//! again).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{AlertSeverity, Event, EventEnvelope, HealthState};
use crate::health::HealthReport;

/// The rules there are, by the name `[[monitoring.alerts]]` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    /// A job failed with no attempt left (or failed in a way a retry would repeat).
    JobFailed,
    /// A loss went NaN or infinite, or above `threshold` × the best loss of that run.
    TrainingDiverged,
    /// A running job reported no progress for `threshold` seconds.
    JobStalled,
    /// A service of this node not healthy (degraded: warning, unhealthy: critical).
    ServiceUnhealthy,
    /// A circuit breaker of this node's gateway is open.
    BreakerOpen,
    /// More than `threshold` restarts of one actor within the last minute.
    RestartStorm,
    /// Events dropped (bus, bridge, WebSocket) faster than `threshold` per second.
    EventsDropped,
    /// Free space on the data directory's file system below `threshold` (a share, 0–1).
    DiskLow,
    /// A node left the cluster.
    NodeLeft,
}

impl RuleKind {
    pub const ALL: [RuleKind; 9] = [
        RuleKind::JobFailed,
        RuleKind::TrainingDiverged,
        RuleKind::JobStalled,
        RuleKind::ServiceUnhealthy,
        RuleKind::BreakerOpen,
        RuleKind::RestartStorm,
        RuleKind::EventsDropped,
        RuleKind::DiskLow,
        RuleKind::NodeLeft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RuleKind::JobFailed => "job_failed",
            RuleKind::TrainingDiverged => "training_diverged",
            RuleKind::JobStalled => "job_stalled",
            RuleKind::ServiceUnhealthy => "service_unhealthy",
            RuleKind::BreakerOpen => "breaker_open",
            RuleKind::RestartStorm => "restart_storm",
            RuleKind::EventsDropped => "events_dropped",
            RuleKind::DiskLow => "disk_low",
            RuleKind::NodeLeft => "node_left",
        }
    }

    pub fn parse(name: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Whether every node sees the condition alike (it comes from the bus), so that one node
    /// of the cluster speaks for all; the others are about the node that evaluates them.
    pub fn is_cluster_wide(self) -> bool {
        matches!(
            self,
            RuleKind::JobFailed
                | RuleKind::TrainingDiverged
                | RuleKind::JobStalled
                | RuleKind::NodeLeft
        )
    }

    /// The built-in rule.
    pub fn default_rule(self) -> Rule {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        let (severity, for_, threshold, keep) = match self {
            RuleKind::JobFailed => (AlertSeverity::Critical, Duration::ZERO, 0.0, minutes(10)),
            RuleKind::TrainingDiverged => {
                (AlertSeverity::Critical, Duration::ZERO, 100.0, minutes(10))
            }
            RuleKind::JobStalled => (
                AlertSeverity::Warning,
                Duration::ZERO,
                300.0,
                Duration::ZERO,
            ),
            RuleKind::ServiceUnhealthy => (
                AlertSeverity::Critical,
                Duration::from_secs(30),
                0.0,
                Duration::ZERO,
            ),
            RuleKind::BreakerOpen => (
                AlertSeverity::Warning,
                Duration::from_secs(10),
                0.0,
                Duration::ZERO,
            ),
            RuleKind::RestartStorm => (AlertSeverity::Critical, Duration::ZERO, 3.0, minutes(5)),
            RuleKind::EventsDropped => (
                AlertSeverity::Warning,
                Duration::from_secs(60),
                1.0,
                Duration::ZERO,
            ),
            RuleKind::DiskLow => (
                AlertSeverity::Warning,
                Duration::from_secs(60),
                0.1,
                Duration::ZERO,
            ),
            RuleKind::NodeLeft => (AlertSeverity::Warning, Duration::ZERO, 0.0, minutes(10)),
        };
        Rule {
            kind: self,
            enabled: true,
            for_,
            severity,
            threshold,
            keep_firing_for: keep,
        }
    }
}

/// The rules as `[[monitoring.alerts]]` changes them (validated by the config crate, so names
/// and severities are known ones).
pub fn rules_from_settings(settings: &[grokforge_config::AlertRuleSettings]) -> Vec<Rule> {
    settings
        .iter()
        .filter_map(|entry| {
            let kind = RuleKind::parse(&entry.rule)?;
            let mut rule = kind.default_rule();
            if let Some(enabled) = entry.enabled {
                rule.enabled = enabled;
            }
            if let Some(ms) = entry.for_ms {
                rule.for_ = Duration::from_millis(ms);
            }
            if let Some(severity) = entry.severity.as_deref().and_then(AlertSeverity::parse) {
                rule.severity = severity;
            }
            if let Some(threshold) = entry.threshold {
                rule.threshold = threshold;
            }
            if let Some(ms) = entry.keep_firing_for_ms {
                rule.keep_firing_for = Duration::from_millis(ms);
            }
            Some(rule)
        })
        .collect()
}

/// One rule as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub kind: RuleKind,
    pub enabled: bool,
    /// How long the condition must hold before the alert fires.
    pub for_: Duration,
    pub severity: AlertSeverity,
    /// The rule's number (see [`RuleKind`]); unused by rules that have none.
    pub threshold: f64,
    /// For incidents seen in an event: how long the alert stays firing after it.
    pub keep_firing_for: Duration,
}

/// An alert: an incident of a rule, firing or resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: Uuid,
    pub rule: String,
    pub severity: AlertSeverity,
    /// What the incident is about: `job`, `node`, `service`, `breaker`, `actor`, …
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn is_firing(&self) -> bool {
        self.resolved_at.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Raised(Alert),
    Resolved(Alert),
}

/// What the node measured at an evaluation.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub node_id: String,
    pub health: Option<HealthReport>,
    /// Breakers that are open now.
    pub open_breakers: Vec<String>,
    /// Restarts so far per actor (a counter).
    pub restarts: BTreeMap<String, u64>,
    /// Events dropped so far, all reasons together (a counter).
    pub dropped: u64,
    /// Free share of the data directory's file system, when known.
    pub disk_free_share: Option<f64>,
}

type Labels = BTreeMap<String, String>;

/// A condition seen now, before `for` and dedup are applied.
struct Seen {
    severity: AlertSeverity,
    summary: String,
}

struct Incident {
    pending_since: DateTime<Utc>,
    /// Set once the alert fired.
    alert: Option<Alert>,
}

/// What the engine knows of a job from the bus.
#[derive(Debug, Clone)]
pub struct JobWatch {
    pub last_progress_at: DateTime<Utc>,
    pub step: u64,
    pub loss: f64,
    pub steps_per_second: f64,
    /// Best loss per variant.
    best_loss: BTreeMap<u32, f64>,
    /// Variants whose latest loss is above the divergence threshold.
    diverging: BTreeMap<u32, f64>,
}

/// How many resolved alerts are kept for `GET /alerts`.
const RESOLVED_KEPT: usize = 1000;

pub struct AlertEngine {
    rules: HashMap<RuleKind, Rule>,
    incidents: BTreeMap<(RuleKind, Labels), Incident>,
    resolved: VecDeque<Alert>,
    /// Running jobs, from the bus.
    jobs: HashMap<Uuid, JobWatch>,
    /// Incidents seen in events, held until the time given (or until cleared).
    held: BTreeMap<(RuleKind, Labels), (DateTime<Utc>, AlertSeverity, String)>,
    /// (when, restarts per actor, events dropped) at earlier evaluations, for rates.
    samples: VecDeque<(DateTime<Utc>, BTreeMap<String, u64>, u64)>,
    /// Id and start of cluster-wide alerts another node announced, for incidents this engine
    /// has not fired yet: when it does (or takes over the lease), it is the same alert.
    adopted: HashMap<(RuleKind, Labels), (Uuid, DateTime<Utc>)>,
}

/// How many adopted identities are kept at most (each is dropped when used or resolved).
const ADOPTED_KEPT: usize = 10_000;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

impl AlertEngine {
    pub fn new(rules: Vec<Rule>) -> AlertEngine {
        let mut by_kind: HashMap<RuleKind, Rule> = RuleKind::ALL
            .into_iter()
            .map(|kind| (kind, kind.default_rule()))
            .collect();
        for rule in rules {
            by_kind.insert(rule.kind, rule);
        }
        AlertEngine {
            rules: by_kind,
            incidents: BTreeMap::new(),
            resolved: VecDeque::new(),
            jobs: HashMap::new(),
            held: BTreeMap::new(),
            samples: VecDeque::new(),
            adopted: HashMap::new(),
        }
    }

    /// Takes over the identity (id, start) of a cluster-wide alert another node announced, so
    /// that every node knows the same alert and whichever holds the lease when it clears
    /// resolves that one.
    pub fn adopt(&mut self, alert: &Alert) {
        let Some(kind) = RuleKind::parse(&alert.rule).filter(|kind| kind.is_cluster_wide()) else {
            return;
        };
        let key = (kind, alert.labels.clone());
        match self.incidents.get_mut(&key) {
            Some(Incident {
                alert: Some(own), ..
            }) => {
                own.id = alert.id;
                own.started_at = alert.started_at;
            }
            _ => {
                if self.adopted.len() >= ADOPTED_KEPT {
                    self.adopted.clear();
                }
                self.adopted.insert(key, (alert.id, alert.started_at));
            }
        }
    }

    /// Another node resolved `alert`.
    pub fn forget(&mut self, alert: &Alert) {
        if let Some(kind) = RuleKind::parse(&alert.rule) {
            self.adopted.remove(&(kind, alert.labels.clone()));
        }
    }

    pub fn rule(&self, kind: RuleKind) -> &Rule {
        &self.rules[&kind]
    }

    /// The jobs the engine watches, by id.
    pub fn jobs(&self) -> &HashMap<Uuid, JobWatch> {
        &self.jobs
    }

    /// Holds an incident seen in an event for the rule's `keep_firing_for`.
    fn hold(&mut self, kind: RuleKind, labels: Labels, now: DateTime<Utc>, summary: String) {
        let rule = &self.rules[&kind];
        if !rule.enabled {
            return;
        }
        let until = now
            + chrono::Duration::from_std(rule.keep_firing_for).unwrap_or(chrono::Duration::zero());
        // Seen again: held longer, still described by what was seen first.
        self.held
            .entry((kind, labels))
            .and_modify(|(held_until, _, _)| *held_until = until)
            .or_insert((until, rule.severity, summary));
    }

    /// Takes in one event of the bus.
    pub fn observe(&mut self, envelope: &EventEnvelope, now: DateTime<Utc>) {
        match &envelope.event {
            Event::TrainingStarted { job_id, .. } => {
                self.jobs.entry(*job_id).or_insert_with(|| JobWatch {
                    last_progress_at: now,
                    step: 0,
                    loss: f64::NAN,
                    steps_per_second: 0.0,
                    best_loss: BTreeMap::new(),
                    diverging: BTreeMap::new(),
                });
            }
            Event::TrainingProgress {
                job_id,
                variant,
                step,
                loss,
                steps_per_second,
                ..
            } => {
                let threshold = self.rules[&RuleKind::TrainingDiverged].threshold;
                let watch = self.jobs.entry(*job_id).or_insert_with(|| JobWatch {
                    last_progress_at: now,
                    step: 0,
                    loss: f64::NAN,
                    steps_per_second: 0.0,
                    best_loss: BTreeMap::new(),
                    diverging: BTreeMap::new(),
                });
                watch.last_progress_at = now;
                watch.step = *step;
                watch.loss = *loss;
                watch.steps_per_second = *steps_per_second;
                let best = watch.best_loss.entry(*variant).or_insert(*loss);
                if *loss < *best {
                    *best = *loss;
                }
                if !loss.is_finite() {
                    watch.diverging.remove(variant);
                    // An incident, as when the job fails of it: a job that trains on
                    // (`training.stop_on_divergence = false`) may end before the next
                    // evaluation.
                    self.hold(
                        RuleKind::TrainingDiverged,
                        labels(&[("job", job_id.to_string())]),
                        now,
                        format!(
                            "job {job_id} diverged: variant {variant}'s loss is {loss} at step {step}"
                        ),
                    );
                } else if *best > 0.0 && *loss > threshold * *best {
                    watch.diverging.insert(*variant, *loss);
                } else {
                    watch.diverging.remove(variant);
                }
            }
            Event::TrainingCompleted { job_id, .. } | Event::TrainingCancelled { job_id, .. } => {
                self.jobs.remove(job_id);
            }
            Event::TrainingFailed {
                job_id,
                attempt,
                error,
                will_retry,
                divergence,
            } => {
                self.jobs.remove(job_id);
                let job = labels(&[("job", job_id.to_string())]);
                if divergence.is_some() {
                    self.hold(
                        RuleKind::TrainingDiverged,
                        job.clone(),
                        now,
                        format!("job {job_id} diverged: {error}"),
                    );
                }
                if !will_retry {
                    self.hold(
                        RuleKind::JobFailed,
                        job,
                        now,
                        format!("job {job_id} failed for good at attempt {attempt}: {error}"),
                    );
                }
            }
            Event::NodeLeft { node_id, reason } => self.hold(
                RuleKind::NodeLeft,
                labels(&[("node", node_id.clone())]),
                now,
                format!("node {node_id} left the cluster: {reason}"),
            ),
            Event::NodeJoined { node_id, .. } => {
                self.held
                    .remove(&(RuleKind::NodeLeft, labels(&[("node", node_id.clone())])));
            }
            _ => {}
        }
    }

    /// Evaluates every rule now; returns what fired and what resolved.
    pub fn evaluate(&mut self, inputs: &Inputs, now: DateTime<Utc>) -> Vec<Transition> {
        let mut seen: BTreeMap<(RuleKind, Labels), Seen> = BTreeMap::new();
        let node = inputs.node_id.clone();

        self.held.retain(|_, (until, _, _)| *until > now);
        for ((kind, labels), (_, severity, summary)) in &self.held {
            seen.insert(
                (*kind, labels.clone()),
                Seen {
                    severity: *severity,
                    summary: summary.clone(),
                },
            );
        }
        let stalled_after = self.rules[&RuleKind::JobStalled].threshold;
        for (job_id, watch) in &self.jobs {
            let silent = (now - watch.last_progress_at).to_std().unwrap_or_default();
            if silent.as_secs_f64() > stalled_after {
                seen.insert(
                    (RuleKind::JobStalled, labels(&[("job", job_id.to_string())])),
                    Seen {
                        severity: self.rules[&RuleKind::JobStalled].severity,
                        summary: format!(
                            "job {job_id} made no progress for {:.0} s (at step {})",
                            silent.as_secs_f64(),
                            watch.step
                        ),
                    },
                );
            }
            for (variant, loss) in &watch.diverging {
                seen.insert(
                    (
                        RuleKind::TrainingDiverged,
                        labels(&[
                            ("job", job_id.to_string()),
                            ("variant", variant.to_string()),
                        ]),
                    ),
                    Seen {
                        severity: self.rules[&RuleKind::TrainingDiverged].severity,
                        summary: format!(
                            "job {job_id} variant {variant}: loss {loss} is far above its best"
                        ),
                    },
                );
            }
        }
        if let Some(report) = &inputs.health {
            let components = || report.services.iter().chain(report.dependencies.iter());
            let unwell = |name: &String| {
                components()
                    .any(|(other, health)| other == name && health.status != HealthState::Healthy)
            };
            for (service, health) in components() {
                if health.status == HealthState::Healthy {
                    continue;
                }
                // Inhibited: degraded only because something it depends on is not healthy, whose
                // own alert names the cause. One database outage is one alert, not one per
                // service that uses the database.
                if health.status == HealthState::Degraded && health.depends_on.iter().any(unwell) {
                    continue;
                }
                let severity = match health.status {
                    HealthState::Degraded => AlertSeverity::Warning,
                    _ => self.rules[&RuleKind::ServiceUnhealthy].severity,
                };
                seen.insert(
                    (
                        RuleKind::ServiceUnhealthy,
                        labels(&[("node", node.clone()), ("service", service.clone())]),
                    ),
                    Seen {
                        severity,
                        summary: format!(
                            "{service} on {node} is {}: {}",
                            health.status.as_str(),
                            health.reason.as_deref().unwrap_or("no reason given")
                        ),
                    },
                );
            }
        }
        for breaker in &inputs.open_breakers {
            seen.insert(
                (
                    RuleKind::BreakerOpen,
                    labels(&[("node", node.clone()), ("breaker", breaker.clone())]),
                ),
                Seen {
                    severity: self.rules[&RuleKind::BreakerOpen].severity,
                    summary: format!("the circuit breaker of {breaker} on {node} is open"),
                },
            );
        }
        // Rates over the last minute of samples.
        self.samples
            .push_back((now, inputs.restarts.clone(), inputs.dropped));
        while self
            .samples
            .front()
            .is_some_and(|(at, _, _)| now - *at > chrono::Duration::seconds(60))
        {
            self.samples.pop_front();
        }
        if let Some((first_at, first_restarts, first_dropped)) = self.samples.front() {
            let storm = self.rules[&RuleKind::RestartStorm].threshold;
            for (actor, count) in &inputs.restarts {
                let before = first_restarts.get(actor).copied().unwrap_or(0);
                let recent = count.saturating_sub(before);
                if recent as f64 > storm {
                    seen.insert(
                        (
                            RuleKind::RestartStorm,
                            labels(&[("node", node.clone()), ("actor", actor.clone())]),
                        ),
                        Seen {
                            severity: self.rules[&RuleKind::RestartStorm].severity,
                            summary: format!(
                                "{actor} on {node} restarted {recent} times within a minute"
                            ),
                        },
                    );
                }
            }
            let seconds = (now - *first_at).num_milliseconds() as f64 / 1000.0;
            let dropped = inputs.dropped.saturating_sub(*first_dropped);
            let limit = self.rules[&RuleKind::EventsDropped].threshold;
            if seconds > 0.0 && dropped as f64 / seconds > limit {
                seen.insert(
                    (RuleKind::EventsDropped, labels(&[("node", node.clone())])),
                    Seen {
                        severity: self.rules[&RuleKind::EventsDropped].severity,
                        summary: format!(
                            "{dropped} events dropped on {node} in {seconds:.0} s ({:.1}/s)",
                            dropped as f64 / seconds
                        ),
                    },
                );
            }
        }
        if let Some(free) = inputs.disk_free_share
            && free < self.rules[&RuleKind::DiskLow].threshold
        {
            seen.insert(
                (RuleKind::DiskLow, labels(&[("node", node.clone())])),
                Seen {
                    severity: self.rules[&RuleKind::DiskLow].severity,
                    summary: format!(
                        "{:.1} % free on the data directory's file system of {node}",
                        free * 100.0
                    ),
                },
            );
        }
        seen.retain(|(kind, _), _| self.rules[kind].enabled);
        self.transitions(seen, now)
    }

    fn transitions(
        &mut self,
        seen: BTreeMap<(RuleKind, Labels), Seen>,
        now: DateTime<Utc>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        // Cleared: pending ones vanish, firing ones resolve.
        let cleared: Vec<(RuleKind, Labels)> = self
            .incidents
            .keys()
            .filter(|key| !seen.contains_key(*key))
            .cloned()
            .collect();
        for key in cleared {
            if let Some(Incident {
                alert: Some(mut alert),
                ..
            }) = self.incidents.remove(&key)
            {
                alert.resolved_at = Some(now);
                self.resolved.push_back(alert.clone());
                if self.resolved.len() > RESOLVED_KEPT {
                    self.resolved.pop_front();
                }
                out.push(Transition::Resolved(alert));
            }
        }
        for ((kind, labels), condition) in seen {
            let rule = &self.rules[&kind];
            let incident = self
                .incidents
                .entry((kind, labels.clone()))
                .or_insert(Incident {
                    pending_since: now,
                    alert: None,
                });
            let held_for = (now - incident.pending_since).to_std().unwrap_or_default();
            if incident.alert.is_none() && held_for >= rule.for_ {
                let (id, started_at) = self
                    .adopted
                    .remove(&(kind, labels.clone()))
                    .unwrap_or((Uuid::now_v7(), incident.pending_since));
                let alert = Alert {
                    id,
                    rule: kind.name().to_string(),
                    severity: condition.severity,
                    labels,
                    summary: condition.summary,
                    started_at,
                    resolved_at: None,
                };
                incident.alert = Some(alert.clone());
                out.push(Transition::Raised(alert));
            }
        }
        out
    }

    /// Firing alerts, newest first.
    pub fn firing(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .incidents
            .values()
            .filter_map(|incident| incident.alert.clone())
            .collect();
        alerts.sort_by_key(|alert| std::cmp::Reverse(alert.started_at));
        alerts
    }

    /// Resolved alerts kept, newest first.
    pub fn resolved(&self) -> Vec<Alert> {
        self.resolved.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Divergence;
    use crate::health::{Check, aggregate};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn event(event: Event) -> EventEnvelope {
        EventEnvelope::new("n1", "training_service", event)
    }

    fn progress(job_id: Uuid, step: u64, loss: f64) -> EventEnvelope {
        event(Event::TrainingProgress {
            job_id,
            variant: 0,
            step,
            total_steps: 100,
            loss,
            accuracy: None,
            val_loss: None,
            val_accuracy: None,
            learning_rate: 1e-3,
            steps_per_second: 10.0,
        })
    }

    fn names(transitions: &[Transition]) -> Vec<(String, bool)> {
        transitions
            .iter()
            .map(|t| match t {
                Transition::Raised(a) => (a.rule.clone(), true),
                Transition::Resolved(a) => (a.rule.clone(), false),
            })
            .collect()
    }

    #[test]
    fn a_condition_fires_after_its_for_duration_once_and_resolves_when_it_clears() {
        let mut engine = AlertEngine::new(vec![Rule {
            for_: Duration::from_secs(30),
            ..RuleKind::ServiceUnhealthy.default_rule()
        }]);
        let mut checks: BTreeMap<String, Check> = crate::health::SERVICES
            .iter()
            .chain(crate::health::RESOURCES.iter())
            .map(|name| (name.to_string(), Check::healthy(1)))
            .collect();
        checks.insert("database".into(), Check::unhealthy("connection refused", 1));
        let sick = Inputs {
            node_id: "n1".into(),
            health: Some(aggregate("n1", &checks)),
            ..Inputs::default()
        };
        // Unhealthy from t=0; not yet for 30 s.
        assert!(engine.evaluate(&sick, at(0)).is_empty());
        assert!(engine.evaluate(&sick, at(20)).is_empty());
        let fired = engine.evaluate(&sick, at(30));
        // One alert, for the database: the services degraded because they depend on it are
        // covered by it.
        assert_eq!(names(&fired), [("service_unhealthy".into(), true)]);
        let Transition::Raised(alert) = &fired[0] else {
            unreachable!()
        };
        assert_eq!(
            alert.labels.get("service").map(String::as_str),
            Some("database")
        );
        assert_eq!(alert.severity, AlertSeverity::Critical);
        assert!(
            alert.summary.contains("connection refused"),
            "{}",
            alert.summary
        );
        let firing = engine.firing().len();
        // Seen again: no new alert.
        assert!(engine.evaluate(&sick, at(40)).is_empty());
        assert_eq!(engine.firing().len(), firing);
        // Cleared: each one resolves, once.
        let healthy = Inputs {
            node_id: "n1".into(),
            ..Inputs::default()
        };
        let resolved = engine.evaluate(&healthy, at(50));
        assert_eq!(resolved.len(), firing);
        assert!(
            resolved
                .iter()
                .all(|t| matches!(t, Transition::Resolved(a) if a.resolved_at == Some(at(50))))
        );
        assert!(engine.firing().is_empty());
        assert_eq!(engine.resolved().len(), firing);
        assert!(engine.evaluate(&healthy, at(60)).is_empty());
    }

    #[test]
    fn a_condition_that_clears_before_its_for_never_fires() {
        let mut engine = AlertEngine::new(vec![]);
        let inputs = Inputs {
            node_id: "n1".into(),
            open_breakers: vec!["model_service".into()],
            ..Inputs::default()
        };
        assert!(engine.evaluate(&inputs, at(0)).is_empty());
        let closed = Inputs {
            node_id: "n1".into(),
            ..Inputs::default()
        };
        assert!(engine.evaluate(&closed, at(5)).is_empty());
        assert!(engine.evaluate(&inputs, at(6)).is_empty());
        assert_eq!(
            names(&engine.evaluate(&inputs, at(16))),
            [("breaker_open".into(), true)]
        );
    }

    #[test]
    fn a_stalled_job_fires_and_resolves_when_progress_comes_back() {
        let mut engine = AlertEngine::new(vec![Rule {
            threshold: 60.0,
            ..RuleKind::JobStalled.default_rule()
        }]);
        let job = Uuid::now_v7();
        let inputs = Inputs::default();
        engine.observe(&progress(job, 10, 1.0), at(0));
        assert!(engine.evaluate(&inputs, at(30)).is_empty());
        let fired = engine.evaluate(&inputs, at(61));
        assert_eq!(names(&fired), [("job_stalled".into(), true)]);
        let Transition::Raised(alert) = &fired[0] else {
            unreachable!()
        };
        assert_eq!(alert.labels["job"], job.to_string());
        engine.observe(&progress(job, 11, 0.9), at(70));
        assert_eq!(
            names(&engine.evaluate(&inputs, at(71))),
            [("job_stalled".into(), false)]
        );
    }

    #[test]
    fn a_job_that_fails_for_good_or_diverges_fires_once_and_a_retry_does_not() {
        let mut engine = AlertEngine::new(vec![]);
        let job = Uuid::now_v7();
        let inputs = Inputs::default();
        engine.observe(
            &event(Event::TrainingFailed {
                job_id: job,
                attempt: 1,
                error: "io error".into(),
                will_retry: true,
                divergence: None,
            }),
            at(0),
        );
        assert!(engine.evaluate(&inputs, at(1)).is_empty());
        engine.observe(
            &event(Event::TrainingFailed {
                job_id: job,
                attempt: 2,
                error: "loss is not finite at step 7 (loss = NaN)".into(),
                will_retry: false,
                divergence: Some(Divergence {
                    step: 7,
                    loss: f64::NAN,
                }),
            }),
            at(2),
        );
        let fired = engine.evaluate(&inputs, at(2));
        let mut fired = names(&fired);
        fired.sort();
        assert_eq!(
            fired,
            [
                ("job_failed".into(), true),
                ("training_diverged".into(), true)
            ]
        );
        assert!(engine.evaluate(&inputs, at(60)).is_empty());
        // After `keep_firing_for` (10 min) both resolve.
        assert!(engine.evaluate(&inputs, at(601)).is_empty());
        assert_eq!(engine.evaluate(&inputs, at(603)).len(), 2);
    }

    #[test]
    fn a_loss_far_above_its_best_is_divergence_and_a_node_that_returns_resolves_its_alert() {
        let mut engine = AlertEngine::new(vec![]);
        let job = Uuid::now_v7();
        let inputs = Inputs::default();
        engine.observe(&progress(job, 1, 2.0), at(0));
        engine.observe(&progress(job, 2, 0.01), at(1));
        engine.observe(&progress(job, 3, 5.0), at(2));
        assert_eq!(
            names(&engine.evaluate(&inputs, at(2))),
            [("training_diverged".into(), true)]
        );
        engine.observe(&progress(job, 4, 0.02), at(3));
        assert_eq!(
            names(&engine.evaluate(&inputs, at(3))),
            [("training_diverged".into(), false)]
        );

        engine.observe(
            &event(Event::NodeLeft {
                node_id: "n2".into(),
                reason: "expired".into(),
            }),
            at(4),
        );
        assert_eq!(
            names(&engine.evaluate(&inputs, at(4))),
            [("node_left".into(), true)]
        );
        engine.observe(
            &event(Event::NodeJoined {
                node_id: "n2".into(),
                address: None,
            }),
            at(5),
        );
        assert_eq!(
            names(&engine.evaluate(&inputs, at(5))),
            [("node_left".into(), false)]
        );
    }

    #[test]
    fn a_nan_loss_of_a_job_that_trains_on_and_ends_fires_once_with_its_failure() {
        let mut engine = AlertEngine::new(vec![]);
        let job = Uuid::now_v7();
        let inputs = Inputs::default();
        engine.observe(&progress(job, 1, 2.0), at(0));
        engine.observe(&progress(job, 2, f64::NAN), at(1));
        engine.observe(&progress(job, 3, f64::NAN), at(1));
        // The job ends before the next evaluation: the incident is still seen.
        engine.observe(
            &event(Event::TrainingCompleted {
                job_id: job,
                model_ids: vec![],
                winner: None,
            }),
            at(1),
        );
        let fired = engine.evaluate(&inputs, at(2));
        assert_eq!(names(&fired), [("training_diverged".into(), true)]);
        let Transition::Raised(alert) = &fired[0] else {
            unreachable!()
        };
        assert!(alert.summary.contains("NaN at step 2"), "{}", alert.summary);
        assert_eq!(alert.labels.get("job"), Some(&job.to_string()));
        assert!(engine.evaluate(&inputs, at(3)).is_empty());
    }

    #[test]
    fn a_cluster_wide_alert_another_node_announced_keeps_its_identity_here() {
        let job = Uuid::now_v7();
        let failed = event(Event::TrainingFailed {
            job_id: job,
            attempt: 3,
            error: "io error".into(),
            will_retry: false,
            divergence: None,
        });
        let inputs = Inputs::default();
        let (mut leader, mut follower, mut late) = (
            AlertEngine::new(vec![]),
            AlertEngine::new(vec![]),
            AlertEngine::new(vec![]),
        );
        leader.observe(&failed, at(0));
        let Transition::Raised(announced) = leader.evaluate(&inputs, at(0)).remove(0) else {
            unreachable!()
        };
        // One follower fired it before the announcement arrived, one after.
        follower.observe(&failed, at(1));
        follower.evaluate(&inputs, at(1));
        follower.adopt(&announced);
        late.observe(&failed, at(2));
        late.adopt(&announced);
        let fired = late.evaluate(&inputs, at(2));
        for engine in [&follower, &late] {
            let firing = engine.firing();
            assert_eq!(firing.len(), 1);
            assert_eq!((firing[0].id, firing[0].started_at), (announced.id, at(0)));
        }
        assert!(matches!(&fired[..], [Transition::Raised(a)] if a.id == announced.id));
        // Whoever resolves it resolves the same alert.
        let resolved = follower.evaluate(&inputs, at(700));
        assert!(matches!(&resolved[..], [Transition::Resolved(a)] if a.id == announced.id));
        // A node's own alerts are not adopted by the others.
        let mut own = announced.clone();
        own.rule = "disk_low".into();
        own.id = Uuid::now_v7();
        late.adopt(&own);
        assert!(late.adopted.is_empty());
    }

    #[test]
    fn restart_storms_drops_and_low_disk_are_rates_and_shares() {
        let mut engine = AlertEngine::new(vec![Rule {
            for_: Duration::ZERO,
            ..RuleKind::EventsDropped.default_rule()
        }]);
        let mut inputs = Inputs {
            node_id: "n1".into(),
            disk_free_share: Some(0.5),
            ..Inputs::default()
        };
        inputs.restarts.insert("model_service".into(), 1);
        assert!(engine.evaluate(&inputs, at(0)).is_empty());
        inputs.restarts.insert("model_service".into(), 5);
        inputs.dropped = 100;
        let mut fired = names(&engine.evaluate(&inputs, at(10)));
        fired.sort();
        assert_eq!(
            fired,
            [
                ("events_dropped".into(), true),
                ("restart_storm".into(), true)
            ]
        );
        inputs.disk_free_share = Some(0.01);
        let rule = engine.rule(RuleKind::DiskLow).for_;
        assert!(engine.evaluate(&inputs, at(11)).is_empty());
        let later = at(11) + chrono::Duration::from_std(rule).unwrap();
        assert!(names(&engine.evaluate(&inputs, later)).contains(&("disk_low".into(), true)));
    }

    #[test]
    fn the_config_crate_knows_the_same_rules() {
        let ours: Vec<&str> = RuleKind::ALL.iter().map(|kind| kind.name()).collect();
        assert_eq!(ours, grokforge_config::ALERT_RULES);
        let rules = rules_from_settings(&[grokforge_config::AlertRuleSettings {
            rule: "job_stalled".into(),
            enabled: None,
            for_ms: Some(1500),
            severity: Some("critical".into()),
            threshold: Some(2.0),
            keep_firing_for_ms: None,
        }]);
        assert_eq!(
            rules,
            [Rule {
                for_: Duration::from_millis(1500),
                severity: AlertSeverity::Critical,
                threshold: 2.0,
                ..RuleKind::JobStalled.default_rule()
            }]
        );
    }

    #[test]
    fn a_disabled_rule_never_fires() {
        let mut engine = AlertEngine::new(vec![Rule {
            enabled: false,
            ..RuleKind::NodeLeft.default_rule()
        }]);
        engine.observe(
            &event(Event::NodeLeft {
                node_id: "n2".into(),
                reason: "expired".into(),
            }),
            at(0),
        );
        assert!(engine.evaluate(&Inputs::default(), at(1)).is_empty());
    }
}
