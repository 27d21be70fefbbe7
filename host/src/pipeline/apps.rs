//! The application table: which application a request belongs to (by the
//! HTTP `Host` header, or the socket request's `app` and the listener's
//! default), which services it may reach, and how it authenticates. Built
//! from the config, keys included, before any socket opens.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Value, json};

use super::auth::JwtAuth;
use crate::config::{AppEvents, AuthConfig, Config, DatabaseConfig};
use crate::core::names::{DEFAULT_APP, pattern_covers, topic_matches};
use crate::resources::database::Database;

/// How an application checks its callers.
pub enum Auth {
    /// Every action is public.
    Open,
    Jwt(Box<JwtAuth>),
}

pub struct App {
    pub name: Arc<str>,
    /// The services it reaches; `None` (the implicit default application)
    /// means every loaded service.
    services: Option<BTreeSet<String>>,
    hosts: Vec<String>,
    pub auth: Auth,
    /// The application's own pool; `None` only where databases are not
    /// opened (`ferry token`).
    pub database: Option<Arc<Database>>,
    /// What outside callers may publish and subscribe to.
    pub events: AppEvents,
    /// Patterns of the response hooks asynchronous requests may name.
    pub reply_hooks: Vec<String>,
    /// The URL of its RabbitMQ broker, read from the config or its
    /// environment variable.
    pub rabbitmq: Option<String>,
}

impl App {
    pub fn serves(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.contains(service))
    }

    /// Whether the config names `service` for this application (so its
    /// absence is an outage, not a typo).
    pub fn lists(&self, service: &str) -> bool {
        self.services.as_ref().is_some_and(|s| s.contains(service))
    }

    /// Whether an asynchronous request may ask for its answer at `hook`.
    pub fn allows_hook(&self, hook: &str) -> bool {
        self.reply_hooks
            .iter()
            .any(|p| crate::resources::hooks::glob_matches(p, hook))
    }

    /// Whether an outside caller may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.events.publish.iter().any(|p| topic_matches(p, topic))
    }

    /// The first of `patterns` an outside consumer may not subscribe to.
    pub fn refused_subscription<'a>(&self, patterns: &'a [String]) -> Option<&'a str> {
        patterns
            .iter()
            .find(|p| !self.events.subscribe.iter().any(|a| pattern_covers(a, p)))
            .map(String::as_str)
    }
}

pub struct Apps {
    by_name: BTreeMap<String, Arc<App>>,
    /// foldhash rather than SipHash: looked up on every HTTP request, and
    /// its keys come from the config, so a client's `Host` header can only
    /// miss, never crowd a bucket.
    by_host: HashMap<String, Arc<App>, foldhash::fast::RandomState>,
    /// Every host name maps here: only when no `apps` are configured.
    any_host: Option<Arc<App>>,
    /// The application of socket requests that name none.
    socket_default: Option<Arc<App>>,
}

impl Apps {
    /// The table `config` describes, with every key loaded and, with
    /// `databases`, every pool created (pools connect on first use).
    ///
    /// On a reload, `previous` is the running table: an application whose
    /// database settings did not change keeps its pool, connections and all.
    pub fn build(
        config: &Config,
        databases: bool,
        previous: Option<&Apps>,
    ) -> Result<Apps, String> {
        let open = |name: &str, db: &DatabaseConfig| -> Result<Option<Arc<Database>>, String> {
            if !databases {
                return Ok(None);
            }
            if let Some(pool) = previous
                .and_then(|apps| apps.get(name))
                .and_then(|app| app.database.as_ref())
                .filter(|pool| pool.config() == db)
            {
                return Ok(Some(pool.clone()));
            }
            Database::open(name, db, &config.data)
                .map(|db| Some(Arc::new(db)))
                .map_err(|e| format!("apps.{name}.database: {e}"))
        };
        if config.apps.is_empty() {
            let app = Arc::new(App {
                name: DEFAULT_APP.into(),
                services: None,
                hosts: Vec::new(),
                auth: Auth::Open,
                database: open(DEFAULT_APP, &DatabaseConfig::default())?,
                events: AppEvents::default(),
                reply_hooks: Vec::new(),
                rabbitmq: None,
            });
            return Ok(Apps {
                by_name: BTreeMap::from([(DEFAULT_APP.to_owned(), app.clone())]),
                by_host: HashMap::default(),
                any_host: Some(app.clone()),
                socket_default: Some(app),
            });
        }
        let mut by_name = BTreeMap::new();
        let mut by_host = HashMap::default();
        for (name, app) in &config.apps {
            let auth = match &app.auth {
                AuthConfig::None => Auth::Open,
                AuthConfig::Jwt(jwt) => Auth::Jwt(Box::new(
                    JwtAuth::load(name, jwt).map_err(|e| format!("apps.{name}.auth.jwt: {e}"))?,
                )),
            };
            let hosts: Vec<String> = app.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            let entry = Arc::new(App {
                name: name.as_str().into(),
                services: Some(app.services.iter().cloned().collect()),
                hosts: hosts.clone(),
                auth,
                database: open(name, &app.database)?,
                events: app.events.clone(),
                reply_hooks: app.reply_hooks.clone(),
                rabbitmq: app
                    .rabbitmq
                    .as_ref()
                    .map(|r| r.resolve(&format!("apps.{name}.rabbitmq")))
                    .transpose()?,
            });
            for host in hosts {
                by_host.insert(host, entry.clone());
            }
            by_name.insert(name.clone(), entry);
        }
        let socket_default = match &config.socket.app {
            Some(name) => by_name.get(name).cloned(),
            None if by_name.len() == 1 => by_name.values().next().cloned(),
            None => None,
        };
        Ok(Apps {
            by_name,
            by_host,
            any_host: None,
            socket_default,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<App>> {
        self.by_name.get(name)
    }

    /// The application a `Host` header value selects; its port, if any, is
    /// ignored and case does not matter.
    pub fn for_host(&self, host: Option<&str>) -> Option<&Arc<App>> {
        if let Some(app) = &self.any_host {
            return Some(app);
        }
        let name = strip_port(host?);
        match self.by_host.get(name) {
            Some(app) => Some(app),
            None if name.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.by_host.get(&name.to_ascii_lowercase())
            }
            None => None,
        }
    }

    /// The application for socket requests that name none.
    pub fn socket_default(&self) -> Option<&Arc<App>> {
        self.socket_default.as_ref()
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// Services some application lists by name; `/readyz` waits for them.
    pub fn listed_services(&self) -> BTreeSet<&str> {
        self.by_name
            .values()
            .filter_map(|app| app.services.as_ref())
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// The applications as `/v1/status` shows them.
    pub fn describe(&self) -> Value {
        let apps: Vec<Value> = self
            .by_name
            .values()
            .map(|app| {
                let auth = match &app.auth {
                    Auth::Open => json!("none"),
                    Auth::Jwt(jwt) => json!({
                        "jwt": jwt.algorithms().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>()
                    }),
                };
                let database = app.database.as_ref().map(|db| {
                    let (open, idle) = db.pool_size();
                    json!({ "engine": db.engine().as_str(), "connections": open, "idle": idle })
                });
                json!({
                    "name": &*app.name,
                    "hosts": app.hosts,
                    "services": app.services.as_ref().map_or(json!("*"), |s| json!(s)),
                    "auth": auth,
                    "database": database,
                })
            })
            .collect();
        Value::Array(apps)
    }
}

/// `shop.localhost:8080` → `shop.localhost`; `[::1]:80` → `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_brackets_are_stripped() {
        assert_eq!(strip_port("shop.localhost:8080"), "shop.localhost");
        assert_eq!(strip_port("shop.localhost"), "shop.localhost");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("127.0.0.1:1"), "127.0.0.1");
    }

    #[test]
    fn hosts_pick_applications() {
        let config = Config::parse(
            "apps:\n  shop:\n    hosts: [Shop.localhost, 127.0.0.1]\n    services: [echo]\n    auth: none\n  blog:\n    hosts: [blog.localhost]\n    services: [echo, faulty]\n    auth: none\n",
        )
        .unwrap();
        let apps = Apps::build(&config, false, None).unwrap();
        assert_eq!(
            &*apps.for_host(Some("shop.LOCALHOST:9")).unwrap().name,
            "shop"
        );
        assert_eq!(&*apps.for_host(Some("127.0.0.1:80")).unwrap().name, "shop");
        assert_eq!(
            &*apps.for_host(Some("blog.localhost")).unwrap().name,
            "blog"
        );
        assert!(apps.for_host(Some("other.localhost")).is_none());
        assert!(apps.for_host(None).is_none());
        assert!(
            apps.socket_default().is_none(),
            "two apps and no socket.app"
        );
        assert!(!apps.get("shop").unwrap().serves("faulty"));
        assert!(apps.get("blog").unwrap().serves("faulty"));
    }
}
