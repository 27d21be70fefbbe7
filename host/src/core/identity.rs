//! Who a verified token says the caller is.

/// A caller's verified identity: what the plugin sees as `ctx.subject`,
/// `ctx.tenant` and `ctx.claims`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: Option<String>,
    pub tenant: Option<String>,
    /// Every claim, as JSON text, for `ctx.claims`.
    pub claims: String,
}
