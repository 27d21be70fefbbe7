//! `apps`: one application's host names, services, auth and database.

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
}
