//! The host's vocabulary, shared by every layer and depending on none of
//! them: names and their rules, the stable error codes, the verified
//! identity of a caller, and the door-neutral [`Invocation`] every door
//! hands to the pipeline.

pub mod error;
pub mod identity;
pub mod invocation;
pub mod json;
pub mod names;

pub use error::{ErrorBody, ErrorCode};
pub use identity::Identity;
pub use invocation::{Caller, DoorKind, Invocation, Origin, Route, TraceId};
