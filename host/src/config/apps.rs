//! `apps`: one application's host names, services, auth, database, bus
//! permissions, webhooks and broker.

use serde::Deserialize;

use super::auth::AuthConfig;
use super::database::DatabaseConfig;

/// One application: its host names, its services and how it authenticates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// HTTP `Host` names (without port) that select this application.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The services reachable through this application.
    pub services: Vec<String>,
    /// `none`, or `jwt: {...}`. Required, so an open application is a
    /// decision written down, never an omission.
    pub auth: AuthConfig,
    /// The application's database; without it, its own SQLite file.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// What outside callers (HTTP, the events socket) may do on the
    /// application's bus, once its auth let them in.
    #[serde(default)]
    pub events: AppEvents,
    /// Where asynchronous requests may ask their answer to be sent
    /// (`reply_to`): patterns of `unix:/path` and `http://host:port/path`
    /// hooks, `*` matching any run of characters. None by default, since a
    /// hook makes the host connect somewhere.
    #[serde(default)]
    pub reply_hooks: Vec<String>,
    /// Where the application's events are POSTed, by endpoint name.
    #[serde(default)]
    pub webhooks: std::collections::BTreeMap<String, super::webhooks::WebhookConfig>,
    /// The RabbitMQ broker of the application's consumers and bridges.
    #[serde(default)]
    pub rabbitmq: Option<super::rabbitmq::RabbitConfig>,
    /// Event topics published to a RabbitMQ exchange, by bridge name.
    #[serde(default)]
    pub bridges: std::collections::BTreeMap<String, super::rabbitmq::BridgeConfig>,
}

/// An application's `events`: topic patterns outside callers may publish
/// to and subscribe to. Plugins are governed by their manifests instead.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppEvents {
    #[serde(default = "AppEvents::everything")]
    pub publish: Vec<String>,
    #[serde(default = "AppEvents::everything")]
    pub subscribe: Vec<String>,
}

impl Default for AppEvents {
    fn default() -> Self {
        AppEvents {
            publish: Self::everything(),
            subscribe: Self::everything(),
        }
    }
}

impl AppEvents {
    fn everything() -> Vec<String> {
        vec![">".to_owned()]
    }

    pub(super) fn validate(&self, app: &str) -> Result<(), String> {
        use crate::core::names::valid_topic_pattern;
        for (key, patterns) in [("publish", &self.publish), ("subscribe", &self.subscribe)] {
            if let Some(bad) = patterns.iter().find(|p| !valid_topic_pattern(p)) {
                return Err(format!(
                    "apps.{app}.events.{key}: `{bad}` is not a topic pattern"
                ));
            }
        }
        Ok(())
    }
}
