//! Health of a node: per-service checks aggregated over the seed's dependency graph.
//!
//! ```text
//! api        → training, model, websocket
//! training   → model, broker
//! model      → database, file_system
//! websocket  → broker
//! monitoring → (none)
//! discovery  → (none)
//! ```
//!
//! Each component gets its own check result. A service's reported state is its own state,
//! made at least `degraded` (with the dependency named in the reason) when something it
//! depends on is not healthy. The overall state is the worst service state. Aggregation is a
//! pure function of the check results, so it is tested without any actor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::HealthState;

/// The components of the graph, services and the resources they depend on.
pub const SERVICES: [&str; 6] = [
    "api",
    "training",
    "model",
    "websocket",
    "monitoring",
    "discovery",
];
pub const RESOURCES: [&str; 3] = ["database", "file_system", "broker"];

/// The seed's dependency graph.
pub fn dependencies(component: &str) -> &'static [&'static str] {
    match component {
        "api" => &["training", "model", "websocket"],
        "training" => &["model", "broker"],
        "model" => &["database", "file_system"],
        "websocket" => &["broker"],
        _ => &[],
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub state: HealthState,
    pub reason: Option<String>,
    pub latency_ms: u64,
}

impl Check {
    pub fn healthy(latency_ms: u64) -> Check {
        Check {
            state: HealthState::Healthy,
            reason: None,
            latency_ms,
        }
    }

    pub fn unhealthy(reason: impl Into<String>, latency_ms: u64) -> Check {
        Check {
            state: HealthState::Unhealthy,
            reason: Some(reason.into()),
            latency_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ComponentHealth {
    pub status: HealthState,
    pub reason: Option<String>,
    pub depends_on: Vec<String>,
    /// How long the component's own check took.
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    pub status: HealthState,
    pub node_id: String,
    pub checked_at: chrono::DateTime<chrono::Utc>,
    pub services: BTreeMap<String, ComponentHealth>,
    pub dependencies: BTreeMap<String, ComponentHealth>,
}

/// Builds the report from the checks of every component. A component with no check result is
/// unhealthy ("not checked") rather than silently healthy.
pub fn aggregate(node_id: &str, checks: &BTreeMap<String, Check>) -> HealthReport {
    let own = |name: &str| {
        checks
            .get(name)
            .cloned()
            .unwrap_or_else(|| Check::unhealthy("not checked", 0))
    };
    let mut services = BTreeMap::new();
    for service in SERVICES {
        services.insert(
            service.to_string(),
            effective(service, &own, &mut Vec::new()),
        );
    }
    let mut dependencies = BTreeMap::new();
    for resource in RESOURCES {
        let check = own(resource);
        dependencies.insert(
            resource.to_string(),
            ComponentHealth {
                status: check.state,
                reason: check.reason,
                depends_on: vec![],
                latency_ms: check.latency_ms,
            },
        );
    }
    let status = services
        .values()
        .map(|c| c.status)
        .max()
        .unwrap_or(HealthState::Healthy);
    HealthReport {
        status,
        node_id: node_id.to_string(),
        checked_at: chrono::Utc::now(),
        services,
        dependencies,
    }
}

fn effective(
    component: &'static str,
    own: &dyn Fn(&str) -> Check,
    path: &mut Vec<&'static str>,
) -> ComponentHealth {
    let check = own(component);
    let mut status = check.state;
    let mut reasons: Vec<String> = check.reason.into_iter().collect();
    path.push(component);
    for dependency in dependencies(component) {
        if path.contains(dependency) {
            continue; // the graph has no cycles; this only guards against a future edit adding one
        }
        let dep = effective(dependency, own, path);
        if dep.status != HealthState::Healthy {
            status = status.max(HealthState::Degraded);
            reasons.push(format!("{dependency} is {}", dep.status.as_str()));
        }
    }
    path.pop();
    ComponentHealth {
        status,
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        depends_on: dependencies(component)
            .iter()
            .map(|d| d.to_string())
            .collect(),
        latency_ms: check.latency_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_healthy() -> BTreeMap<String, Check> {
        SERVICES
            .iter()
            .chain(RESOURCES.iter())
            .map(|c| (c.to_string(), Check::healthy(1)))
            .collect()
    }

    #[test]
    fn all_healthy_is_healthy() {
        let report = aggregate("n", &all_healthy());
        assert_eq!(report.status, HealthState::Healthy);
        assert!(report.services.values().all(|s| s.reason.is_none()));
        assert_eq!(
            report.services["api"].depends_on,
            ["training", "model", "websocket"]
        );
    }

    #[test]
    fn a_dead_database_degrades_its_dependants_transitively() {
        let mut checks = all_healthy();
        checks.insert("database".into(), Check::unhealthy("connection refused", 5));
        let report = aggregate("n", &checks);
        assert_eq!(
            report.dependencies["database"].status,
            HealthState::Unhealthy
        );
        assert_eq!(report.services["model"].status, HealthState::Degraded);
        assert_eq!(
            report.services["model"].reason.as_deref(),
            Some("database is unhealthy")
        );
        assert_eq!(report.services["training"].status, HealthState::Degraded);
        assert_eq!(report.services["api"].status, HealthState::Degraded);
        assert_eq!(report.services["websocket"].status, HealthState::Healthy);
        assert_eq!(report.services["monitoring"].status, HealthState::Healthy);
        assert_eq!(report.status, HealthState::Degraded);
    }

    #[test]
    fn an_unhealthy_service_makes_the_node_unhealthy() {
        let mut checks = all_healthy();
        checks.insert(
            "training".into(),
            Check::unhealthy("did not answer within 1000 ms", 1000),
        );
        let report = aggregate("n", &checks);
        assert_eq!(report.services["training"].status, HealthState::Unhealthy);
        assert_eq!(report.services["api"].status, HealthState::Degraded);
        assert_eq!(report.status, HealthState::Unhealthy);
    }

    #[test]
    fn a_missing_check_is_not_healthy() {
        let mut checks = all_healthy();
        checks.remove("broker");
        let report = aggregate("n", &checks);
        assert_eq!(
            report.dependencies["broker"].reason.as_deref(),
            Some("not checked")
        );
        assert_eq!(report.services["websocket"].status, HealthState::Degraded);
    }
}
