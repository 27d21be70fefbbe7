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
/// are shared with the application and the plugin, the request id and the
/// tenant borrowed from the request, and the claims borrowed when there are
/// none: a plugin reads these on demand, and most calls read none of them,
/// so building one costs no allocation. The instance's call entry keeps an
/// owned one and copies each request's into its strings' room.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub request_id: Cow<'a, str>,
    pub app: Arc<str>,
    pub service: Arc<str>,
    pub tenant: Option<Cow<'a, str>>,
    pub subject: Option<String>,
    pub claims: Cow<'static, str>,
}

impl Context<'_> {
    /// The `context` record of the `service` world's `handler`, which takes
    /// every field at once (its time left counted now, as the call starts).
    pub fn to_wit(&self, deadline: Instant) -> WitContext {
        let left = deadline.saturating_duration_since(Instant::now());
        WitContext {
            request_id: self.request_id.to_string(),
            app: String::from(&*self.app),
            service: String::from(&*self.service),
            tenant: self.tenant.as_deref().map(str::to_owned),
            subject: self.subject.clone(),
            claims: String::from(&*self.claims),
            time_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn into_owned(self) -> Context<'static> {
        Context {
            request_id: Cow::Owned(self.request_id.into_owned()),
            app: self.app,
            service: self.service,
            tenant: self.tenant.map(|t| Cow::Owned(t.into_owned())),
            subject: self.subject,
            claims: self.claims,
        }
    }
}

impl Context<'static> {
    /// Takes `ctx`'s values, the borrowed ones copied into the room this
    /// one's strings already have.
    fn refill(&mut self, ctx: Context<'_>) {
        copy_into(&mut self.request_id, &ctx.request_id);
        match (&mut self.tenant, ctx.tenant) {
            (Some(held), Some(tenant)) => copy_into(held, &tenant),
            (held, tenant) => *held = tenant.map(|t| Cow::Owned(t.into_owned())),
        }
        self.app = ctx.app;
        self.service = ctx.service;
        self.subject = ctx.subject;
        self.claims = ctx.claims;
    }
}

/// Strings with more room than this are not reused: one long request id
/// must not pin its room in an instance for every request after it.
const KEEP_ROOM: usize = 256;

fn copy_into(held: &mut Cow<'static, str>, value: &str) {
    match held {
        Cow::Owned(room) if room.capacity() <= KEEP_ROOM => {
            room.clear();
            room.push_str(value);
        }
        _ => *held = Cow::Owned(value.to_owned()),
    }
}

/// What a call's plugin may read about it.
pub struct CallInfo {
    pub ctx: Context<'static>,
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
    /// Puts the request into the entry (made on the instance's first
    /// request, refilled after: no box, no move of a `CallInfo` and no new
    /// strings per request) and opens it to the plugin; answers the
    /// entry's rep.
    pub fn lend(
        &mut self,
        table: &mut ResourceTable,
        ctx: Context<'_>,
        deadline: Instant,
        origin: Origin,
    ) -> wasmtime::Result<u32> {
        self.active = true;
        match &self.entry {
            Some(entry) => {
                let info = table.get_mut(entry)?;
                info.ctx.refill(ctx);
                info.deadline = deadline;
                info.origin = origin;
                Ok(entry.rep())
            }
            None => {
                let info = CallInfo {
                    ctx: ctx.into_owned(),
                    deadline,
                    origin,
                };
                Ok(self.entry.insert(table.push(info)?).rep())
            }
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
        Ok(self.info(&call)?.ctx.request_id.to_string())
    }

    fn app(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(String::from(&*self.info(&call)?.ctx.app))
    }

    fn service(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<String> {
        Ok(String::from(&*self.info(&call)?.ctx.service))
    }

    fn tenant(&mut self, call: Resource<CallInfo>) -> wasmtime::Result<Option<String>> {
        Ok(self.info(&call)?.ctx.tenant.as_deref().map(str::to_owned))
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

    fn drop(&mut self, _: Resource<CallInfo>) -> wasmtime::Result<()> {
        // Every handle `current` gives names the instance's one entry, which
        // stays for the next request (no other entry is ever made): only
        // the count of handles out goes down.
        self.slot.kept = self.slot.kept.saturating_sub(1);
        Ok(())
    }
}
