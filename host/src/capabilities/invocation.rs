//! `ferry:plugin/invocation`: the request being handled, as a resource the
//! plugin reads field by field. The runtime puts one `CallInfo` into the
//! store's resource table for each call and takes it out afterwards; the
//! plugin only ever borrows it, so nothing of one request survives into the
//! next.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::{InvocationHost, InvocationHostCall, WitContext};
use crate::core::Origin;

/// What the host tells a plugin about the request it handles. The names
/// are shared with the application and the plugin and the claims are
/// borrowed when there are none: a plugin reads these on demand, and most
/// calls read none of them, so building one costs no allocation for them.
#[derive(Debug, Clone)]
pub struct Context {
    pub request_id: String,
    pub app: Arc<str>,
    pub service: Arc<str>,
    pub tenant: Option<String>,
    pub subject: Option<String>,
    pub claims: Cow<'static, str>,
}

impl Context {
    /// The `context` record of the `service` world's `handler`, which takes
    /// every field at once (its time left counted now, as the call starts).
    pub fn to_wit(&self, deadline: Instant) -> WitContext {
        let left = deadline.saturating_duration_since(Instant::now());
        WitContext {
            request_id: self.request_id.clone(),
            app: String::from(&*self.app),
            service: String::from(&*self.service),
            tenant: self.tenant.clone(),
            subject: self.subject.clone(),
            claims: String::from(&*self.claims),
            time_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// What a call's plugin may read about it.
pub struct CallInfo {
    pub ctx: Context,
    /// When the caller stops waiting.
    pub deadline: Instant,
    pub origin: Origin,
}

/// The interface's view of the store: the resource table the call lives in.
pub struct CallTable<'a>(pub &'a mut ResourceTable);

/// Names the projection the linker uses to reach [`CallTable`].
pub struct HasCalls;

impl wasmtime::component::HasData for HasCalls {
    type Data<'a> = CallTable<'a>;
}

impl CallTable<'_> {
    fn info(&self, call: &Resource<CallInfo>) -> wasmtime::Result<&CallInfo> {
        Ok(self.0.get(call)?)
    }
}

impl InvocationHost for CallTable<'_> {}

impl InvocationHostCall for CallTable<'_> {
    fn request_id(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(self.info(&call)?.ctx.request_id.clone())
    }

    fn app(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(String::from(&*self.info(&call)?.ctx.app))
    }

    fn service(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(String::from(&*self.info(&call)?.ctx.service))
    }

    fn tenant(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.ctx.tenant.clone())
    }

    fn subject(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.ctx.subject.clone())
    }

    fn claims(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(String::from(&*self.info(&call)?.ctx.claims))
    }

    fn time_left_ms(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<u64> {
        let left = self
            .info(&call)?
            .deadline
            .saturating_duration_since(Instant::now());
        Ok(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    }

    fn caller(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.origin.caller.clone())
    }

    fn trace_id(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(self.info(&call)?.origin.trace.to_string())
    }

    fn drop(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<()> {
        // Plugins only borrow calls; the runtime removes its own entry.
        // Should a handle ever be owned and dropped, the entry goes too.
        let _ = self.0.delete(call);
        Ok(())
    }
}
