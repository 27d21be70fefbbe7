//! Names and their rules: services and applications become file and socket
//! names, so only a plain alphabet is allowed.

/// Longest service name; also bounds the per-service socket path.
pub const MAX_SERVICE_NAME: usize = 64;

/// The application every request belongs to until applications are
/// configured.
pub const DEFAULT_APP: &str = "default";

/// Whether `name` can be a service name: it becomes a file name and a socket
/// name, so only lowercase letters, digits, `-` and `_`, starting with a
/// letter or digit.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `name` can name an application: the same rule as service names.
pub fn valid_app_name(name: &str) -> bool {
    valid_service_name(name)
}

#[cfg(test)]
mod tests {
    use super::valid_service_name;

    #[test]
    fn service_names_are_plain() {
        assert!(valid_service_name("echo"));
        assert!(valid_service_name("todo-v2_x"));
        for bad in [
            "",
            ".hidden",
            "-x",
            "Echo",
            "a/b",
            "a.b",
            "x~",
            &"a".repeat(65),
        ] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }
}
