//! Calls to other services of the same application, from inside an
//! action. The manifest lists the services a plugin may call:
//!
//! ```ignore
//! // deploy/orders.yaml:  permissions: {calls: [todo, echo]}
//! use ferry_sdk::services::{self, Request};
//!
//! fn place(ctx: &Ctx, o: Order) -> Result<Placed, Error> {
//!     let item: Item = services::call("todo", "get", &json!({"id": o.item}))?;
//!     let both = services::call_many(&[
//!         Request::new("todo", "list", &json!({}))?,
//!         Request::new("echo", "params", &o)?.timeout_ms(200),
//!     ]);
//!     // ...
//! }
//! ```
//!
//! The callee acts for the same caller (tenant, subject, claims), sees
//! this service as its `ctx.caller()`, and has at most the time this
//! request has left. Its errors come back unchanged.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::ferry::plugin::services as wit;
use crate::Error;

/// One call to make.
#[derive(Debug, Clone)]
pub struct Request(wit::Request);

impl Request {
    /// A call of `action` on `service` with `params` as JSON.
    pub fn new<P: Serialize + ?Sized>(
        service: &str,
        action: &str,
        params: &P,
    ) -> Result<Request, Error> {
        let params = serde_json::to_string(params)
            .map_err(|e| Error::internal(format!("cannot encode the params: {e}")))?;
        Ok(Request::json(service, action, params))
    }

    /// A call whose params are JSON text already.
    pub fn json(service: &str, action: &str, params: String) -> Request {
        Request(wit::Request {
            service: service.to_owned(),
            action: action.to_owned(),
            params,
            timeout_ms: None,
        })
    }

    /// A tighter limit than the time this request has left.
    pub fn timeout_ms(mut self, ms: u64) -> Request {
        self.0.timeout_ms = Some(ms);
        self
    }
}

fn error(e: wit::Error) -> Error {
    Error::new(e.code, e.message)
}

/// Calls `action` of `service`; answers its result deserialized into `R`.
pub fn call<P, R>(service: &str, action: &str, params: &P) -> Result<R, Error>
where
    P: Serialize + ?Sized,
    R: DeserializeOwned,
{
    let text = call_json(Request::new(service, action, params)?)?;
    serde_json::from_str(&text).map_err(|e| {
        Error::internal(format!(
            "`{service}.{action}` answered an unexpected shape: {e}"
        ))
    })
}

/// Makes one call and answers the result as JSON text.
pub fn call_json(request: Request) -> Result<String, Error> {
    wit::call(&request.0).map_err(error)
}

/// Runs the calls at once; answers each one's result as JSON text, in the
/// order given.
pub fn call_many(requests: &[Request]) -> Vec<Result<String, Error>> {
    let requests: Vec<wit::Request> = requests.iter().map(|r| r.0.clone()).collect();
    wit::call_many(&requests)
        .into_iter()
        .map(|r| r.map_err(error))
        .collect()
}
