//! The main socket's section: where it is and who may use it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Longest path a Unix socket can be bound at.
pub const MAX_SOCKET_PATH: usize = 107;

/// The main socket: where it is and who may use it.
///
/// Written either as a plain path (`socket: run/ferry.sock`) or as a map
/// with `path` and the optional keys below.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Permission bits of the socket files, as a quoted octal string.
    #[serde(default = "default_socket_mode", deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Peer user ids allowed to connect (checked with SO_PEERCRED); absent
    /// means any user the file mode lets in.
    #[serde(default)]
    pub allow_uids: Option<Vec<u32>>,
    /// The application a request belongs to when it names none.
    #[serde(default)]
    pub app: Option<String>,
    /// Local callers need no token on this socket. Never the default.
    #[serde(default)]
    pub trusted: bool,
    /// Connections one peer user (by uid) may hold open over all sockets,
    /// so one local user cannot take every connection.
    #[serde(default = "default_per_uid")]
    pub max_connections_per_uid: u32,
}

fn default_per_uid() -> u32 {
    256
}

fn default_socket_mode() -> u32 {
    0o660
}

impl SocketConfig {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        SocketConfig {
            path: path.into(),
            mode: default_socket_mode(),
            allow_uids: None,
            app: None,
            trusted: false,
            max_connections_per_uid: default_per_uid(),
        }
    }
}

/// Reads a file mode as octal digits: `"0660"`, `0660`, `660` and `0o660`
/// all mean rw-rw----. (the YAML parser hands an unquoted scalar over as its
/// text, so `0660` is never misread as the decimal or YAML-1.1 octal number.)
fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    let text = String::deserialize(d)
        .map_err(|_| D::Error::custom("write the mode as an octal string, for example \"0660\""))?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(D::Error::custom(format!(
            "`{text}` is not a file mode: use octal digits up to \"0777\", for example \"0660\""
        ))),
    }
}

/// Reads `socket`: a string is a path; a map is the full form.
pub(super) fn socket_config<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<SocketConfig, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = SocketConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "a socket path, or a map with `path`, `mode`, `allow_uids`, `app`, `trusted`, `max_connections_per_uid`",
            )
        }
        fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<SocketConfig, E> {
            Ok(SocketConfig::at(path))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<SocketConfig, A::Error> {
            SocketConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visitor)
}

/// The HTTP gateway: where it listens and what one connection may cost.
///
/// Written either as an address (`http: 127.0.0.1:8080`) or as a map with
/// `listen` and the optional keys below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Connections open at once. At the cap the oldest connection with no
    /// request running is closed to make room.
    #[serde(default = "default_http_connections")]
    pub max_connections: u32,
    /// A request's headers, and then its body, must arrive within this
    /// long; a keep-alive connection idle this long is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
}

fn default_http_connections() -> u32 {
    1_024
}

fn default_header_timeout() -> u64 {
    30_000
}

impl HttpConfig {
    pub fn at(listen: SocketAddr) -> Self {
        HttpConfig {
            listen,
            max_connections: default_http_connections(),
            header_timeout_ms: default_header_timeout(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("http.max_connections must be at least 1".into());
        }
        if !(1..=3_600_000).contains(&self.header_timeout_ms) {
            return Err(format!(
                "http.header_timeout_ms must be between 1 and 3600000, not {}",
                self.header_timeout_ms
            ));
        }
        Ok(())
    }
}

/// Reads `http`: an address, a map in the full form, or `null` (off).
pub(super) fn http_config<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<HttpConfig>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<HttpConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str(
                "an address such as 127.0.0.1:8080, null, or a map with `listen`, `max_connections`, `header_timeout_ms`",
            )
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: serde::de::Error>(self, addr: &str) -> Result<Self::Value, E> {
            addr.parse()
                .map(|listen| Some(HttpConfig::at(listen)))
                .map_err(|_| {
                    E::custom(format!("`{addr}` is not an address such as 127.0.0.1:8080"))
                })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            HttpConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Visitor)
}
