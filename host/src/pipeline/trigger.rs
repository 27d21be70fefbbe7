//! The host's own triggers (bus subscriptions, queue consumers) running a
//! plugin: the call they make, without a door or a caller.

use std::sync::Arc;
use std::time::Duration;

use super::Pipeline;
use crate::core::Origin;
use crate::runtime::{Call, Context, Work};

/// Runs `work` on the version of `service` serving now, in `app`, for a
/// trigger of the host's own (a bus subscription, a queue consumer): no
/// caller and no identity, the plugin's own timeout, through the plugin's
/// slots and circuit like a request. `id` is the request id the plugin
/// sees.
pub(super) async fn trigger(
    pipeline: &std::sync::Weak<Pipeline>,
    app: &Arc<str>,
    service: &str,
    id: &str,
    work: Work<'_>,
) -> Result<(), crate::runtime::CallError> {
    let unavailable = |detail: &str| crate::runtime::CallError::Overloaded {
        service: service.to_owned(),
        detail: detail.into(),
    };
    let pipeline = pipeline
        .upgrade()
        .ok_or_else(|| unavailable("the host is stopping"))?;
    let plugin = pipeline
        .table
        .get(service)
        .ok_or_else(|| unavailable("the service is not loaded"))?;
    let database = pipeline
        .apps()
        .get(app)
        .and_then(|app| app.database.clone());
    drop(pipeline);
    let timeout_ms = plugin.limits().timeout_ms;
    let now = std::time::Instant::now();
    let call = Call {
        ctx: Context {
            request_id: serde_json::to_string(id)
                .expect("a string serializes")
                .into(),
            app: app.clone(),
            service: service.into(),
            tenant: None,
            subject: None,
            claims: "{}".into(),
        },
        app: app.clone(),
        database,
        work,
        received: now,
        deadline: now + Duration::from_millis(timeout_ms),
        timeout_ms,
        origin: Origin::outside(None),
    };
    Box::pin(plugin.call(call)).await.map(drop)
}
