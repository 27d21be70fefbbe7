//! The door-neutral request: what every door turns its bytes into before
//! the pipeline routes, authenticates and runs it. Nothing after the door
//! knows which door it was, except through `door` (for logs and metrics).

use std::sync::Arc;
use std::time::Instant;

use super::Identity;

/// Which door an invocation came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorKind {
    /// The main socket or a service's own socket.
    Unix,
    Http,
    /// A plugin calling another service through `services`.
    Plugin,
    /// Forwarded by another host of the cluster (never forwarded again).
    Cluster,
}

impl DoorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorKind::Unix => "unix",
            DoorKind::Http => "http",
            DoorKind::Plugin => "plugin",
            DoorKind::Cluster => "cluster",
        }
    }
}

/// How the invocation's application is chosen.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// HTTP: the `Host` header picks the application; an application the
    /// request names as well must be that one.
    Host {
        host: Option<&'a str>,
        named: Option<&'a str>,
    },
    /// A socket: the request's `app`, else the listener's default, else the
    /// only application there is.
    Named {
        app: Option<&'a str>,
        default: Option<&'a str>,
    },
}

/// One request, as every door hands it to the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub door: DoorKind,
    pub route: Route<'a>,
    pub service: &'a str,
    pub action: &'a str,
    /// The params as JSON text (`{}` when the caller sent none).
    pub params: &'a str,
    /// The caller's request id as JSON text (`42`, `"a-1"`).
    pub request_id: &'a str,
    /// A token to verify against the application's keys.
    pub token: Option<&'a str>,
    /// The tenant the caller asks to act for.
    pub tenant: Option<&'a str>,
    /// A tighter deadline than the plugin's own `timeout_ms`.
    pub timeout_ms: Option<u64>,
    /// The door's callers need no token (a trusted socket).
    pub trusted: bool,
    /// When the door read the request: its deadline counts from here.
    pub received: Instant,
    /// The trace id the caller sent, if it sent a valid one.
    pub trace: Option<TraceId>,
    /// Set when a plugin makes the call: who it is and what it passes on.
    pub caller: Option<&'a Caller>,
}

/// What a plugin's call to another service carries from the request it is
/// handling: the verified identity unchanged, the deadline, and the chain.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling service.
    pub service: String,
    pub app: Arc<str>,
    pub identity: Identity,
    /// The caller's own deadline: the callee's is never later.
    pub deadline: Instant,
    /// Calls on the chain so far: 1 for a call made by a request's handler.
    pub depth: u32,
    pub trace: TraceId,
}

/// Where a call came from, as the callee's plugin sees it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The calling service, for a call made by a plugin.
    pub caller: Option<String>,
    /// Calls between the outside request and this one.
    pub depth: u32,
    pub trace: TraceId,
}

impl Origin {
    /// The origin of a request from outside, with a fresh trace id unless
    /// the caller sent a valid one.
    pub fn outside(trace: Option<TraceId>) -> Origin {
        Origin {
            caller: None,
            depth: 0,
            trace: trace.unwrap_or_else(TraceId::new),
        }
    }
}

/// A W3C trace id: 128 bits, shown as 32 lowercase hex digits. A number
/// rather than text, so a request that never shows its trace never formats
/// or allocates one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(u128);

impl TraceId {
    /// A new id: unique within the process (a counter) and across
    /// processes (the start time and pid mixed in), without a random source
    /// per request.
    pub fn new() -> TraceId {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            now ^ (u64::from(std::process::id()) << 40) | 1
        });
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        // A 64-bit mix, so consecutive ids do not look alike.
        let mut x = n.wrapping_add(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 31;
        TraceId((u128::from(seed) << 64) | u128::from(x))
    }

    /// Reads 32 lowercase hex digits, not all zero.
    pub fn parse(text: &str) -> Option<TraceId> {
        let hex = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let id = u128::from_str_radix(text, 16).ok().filter(|_| hex)?;
        (id != 0).then_some(TraceId(id))
    }

    /// The trace id of a W3C `traceparent` header
    /// (`00-<trace id>-<parent id>-<flags>`), if it is one.
    pub fn of_traceparent(header: &str) -> Option<TraceId> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex(version, 2) && version != "ff" && hex(parent, 16) && hex(flags, 2)) {
            return None;
        }
        TraceId::parse(trace)
    }

    /// 64 bits for a span id of our own (`traceparent`'s parent field).
    pub fn span(self) -> u64 {
        self.0 as u64 ^ TraceId::new().0 as u64
    }

    /// A `traceparent` header value (`00-<trace>-<span>-01`) for a span of
    /// our own in this trace. Written from a table of digit pairs: the
    /// HTTP door puts one on every response, and `fmt`'s padded hex cost it
    /// more than the rest of the header handling.
    pub fn traceparent(self) -> [u8; 55] {
        let mut out = *b"00-################################-################-01";
        write_hex(&mut out[3..35], self.0);
        write_hex(&mut out[36..52], u128::from(self.span()));
        out
    }
}

/// `n`'s low `out.len()` hex digits (an even number), lowercase, most
/// significant first: a byte at a time, from a table of digit pairs.
fn write_hex(out: &mut [u8], n: u128) {
    debug_assert!(out.len() % 2 == 0 && out.len() <= 32);
    let bytes = n.to_be_bytes();
    let low = &bytes[bytes.len() - out.len() / 2..];
    for (pair, byte) in out.chunks_exact_mut(2).zip(low) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 0xf]];
        i += 1;
    }
    pairs
};

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut digits = [0u8; 32];
        write_hex(&mut digits, self.0);
        f.write_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

#[cfg(test)]
mod tests {
    use super::{TraceId, write_hex};

    #[test]
    fn hex_is_the_low_digits_with_their_leading_zeros() {
        let mut span = [0u8; 16];
        write_hex(&mut span, 0xffff_0000_0000_0000_00f0_67aa_0ba9_02b7);
        assert_eq!(&span, b"00f067aa0ba902b7");
        let mut trace = [0u8; 32];
        write_hex(&mut trace, u128::MAX - 0xf0);
        assert_eq!(&trace, b"ffffffffffffffffffffffffffffff0f");
    }

    #[test]
    fn trace_ids_read_and_show_as_32_hex_digits() {
        let id = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "0".repeat(32).as_str(),
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "+bf92f3577b34da6a3ce929d0e0e473",
        ] {
            assert!(TraceId::parse(bad).is_none(), "{bad}");
        }
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceId::of_traceparent(header), Some(id));
        assert!(
            TraceId::of_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .is_none()
        );
        let (a, b) = (TraceId::new(), TraceId::new());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn a_traceparent_carries_the_trace_and_a_span_of_its_own() {
        // Leading zeros stay: every field has its fixed width.
        let id = TraceId::parse("00000000000000000000000000000abc").unwrap();
        assert_eq!(id.to_string(), "00000000000000000000000000000abc");
        let header = String::from_utf8(id.traceparent().to_vec()).unwrap();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", "00000000000000000000000000000abc", "01")
        );
        assert_eq!(parts[2].len(), 16);
        assert!(
            parts[2]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(TraceId::of_traceparent(&header), Some(id));
        assert_ne!(
            id.traceparent(),
            id.traceparent(),
            "each answer is a span of its own"
        );
    }
}
