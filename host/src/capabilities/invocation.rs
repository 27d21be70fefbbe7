//! `ferry:plugin/invocation`: the request being handled, as a resource the
//! plugin reads field by field. Each instance keeps one `CallInfo` entry in
//! its store's resource table, filled anew for every request and lent only
//! while the request runs: plugins of 0.1.1 and 0.1.2 are handed it as a
//! borrow, those of 0.1.3 ask for it (`current`) when they read it.
//! Nothing of one request is readable once it has ended.

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

/// An instance's one call entry, and whether a request is running on it.
#[derive(Default)]
pub struct CallSlot {
    entry: Option<Resource<CallInfo>>,
    active: bool,
    /// Handles `current` gave that the plugin has not dropped. Every one
    /// names the same entry, which the next request refills: an instance
    /// that keeps one past its request is not given another request.
    kept: u32,
}

impl CallSlot {
    /// Puts `info` into the entry (made on the instance's first request,
    /// refilled after: no box and no move of a `CallInfo` per request) and
    /// opens it to the plugin; answers the entry's rep.
    pub fn lend(&mut self, table: &mut ResourceTable, info: CallInfo) -> wasmtime::Result<u32> {
        self.active = true;
        match &self.entry {
            Some(entry) => {
                *table.get_mut(entry)? = info;
                Ok(entry.rep())
            }
            None => Ok(self.entry.insert(table.push(info)?).rep()),
        }
    }

    /// The request is over: handles the plugin kept read nothing more.
    pub fn end(&mut self) {
        self.active = false;
    }

    /// Whether the plugin still holds a handle of the request that ended.
    pub fn kept_past_end(&self) -> bool {
        !self.active && self.kept > 0
    }

    fn rep(&self) -> Option<u32> {
        self.entry.as_ref().map(Resource::rep)
    }
}

/// The interface's view of the store: the resource table the call lives
/// in, and the instance's call entry.
pub struct CallTable<'a> {
    pub table: &'a mut ResourceTable,
    pub slot: &'a mut CallSlot,
}

/// Names the projection the linker uses to reach [`CallTable`].
pub struct HasCalls;

impl wasmtime::component::HasData for HasCalls {
    type Data<'a> = CallTable<'a>;
}

impl CallTable<'_> {
    fn info(&self, call: &Resource<CallInfo>) -> wasmtime::Result<&CallInfo> {
        // A handle kept past its request: a bug in the plugin, which traps
        // as the use of any stale handle does.
        if !self.slot.active {
            wasmtime::bail!("the request this `call` handle names has ended");
        }
        Ok(self.table.get(call)?)
    }
}

impl InvocationHost for CallTable<'_> {
    fn current(&mut self) -> wasmtime::Result<Option<Resource<CallInfo>>> {
        let Some(rep) = self.slot.rep().filter(|_| self.slot.active) else {
            return Ok(None);
        };
        self.slot.kept += 1;
        Ok(Some(Resource::new_own(rep)))
    }
}

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
        // Every handle `current` gives names the instance's one entry,
        // which stays for the next request; no other entry is ever made.
        if Some(call.rep()) == self.slot.rep() {
            self.slot.kept = self.slot.kept.saturating_sub(1);
        } else {
            let _ = self.table.delete(call);
        }
        Ok(())
    }
}
