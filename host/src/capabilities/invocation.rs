//! `ferry:plugin/invocation`: the request being handled, as a resource the
//! plugin reads field by field. The runtime puts one `CallInfo` into the
//! store's resource table for each call and takes it out afterwards; the
//! plugin only ever borrows it, so nothing of one request survives into the
//! next.

use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::{Context, InvocationHost, InvocationHostCall};
use crate::core::Origin;

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
        Ok(self.info(&call)?.ctx.app.clone())
    }

    fn service(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(self.info(&call)?.ctx.service.clone())
    }

    fn tenant(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.ctx.tenant.clone())
    }

    fn subject(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.ctx.subject.clone())
    }

    fn claims(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(self.info(&call)?.ctx.claims.clone())
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
