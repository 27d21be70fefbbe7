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

/// Longest event topic or subscription pattern.
pub const MAX_TOPIC: usize = 256;

/// Whether `token` may be one dot-separated part of a topic: the letters,
/// digits, `-` and `_` that NATS subjects share with file names, so a topic
/// maps one to one onto a subject.
fn topic_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `topic` can be published to: dot-separated tokens such as
/// `orders.created`, no wildcards.
pub fn valid_topic(topic: &str) -> bool {
    topic.len() <= MAX_TOPIC && topic.split('.').all(topic_token)
}

/// Whether `pattern` can be subscribed to: a topic whose tokens may be `*`
/// (any one token), and whose last token may be `>` (one or more tokens).
pub fn valid_topic_pattern(pattern: &str) -> bool {
    if pattern.len() > MAX_TOPIC {
        return false;
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    tokens
        .iter()
        .enumerate()
        .all(|(i, t)| topic_token(t) || *t == "*" || (*t == ">" && i == tokens.len() - 1))
}

/// Whether the valid `pattern` covers the valid `topic`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut topic = topic.split('.');
    for want in pattern.split('.') {
        match (want, topic.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// Whether the valid pattern `outer` matches every topic the valid
/// pattern `inner` matches (so a grant of `outer` allows subscribing to
/// `inner`).
pub fn pattern_covers(outer: &str, inner: &str) -> bool {
    let mut inner = inner.split('.');
    for want in outer.split('.') {
        match (want, inner.next()) {
            (">", Some(_)) => return true,
            ("*", Some(got)) if got != ">" => {}
            (want, Some(got)) if want == got && want != "*" => {}
            _ => return false,
        }
    }
    inner.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::{
        pattern_covers, topic_matches, valid_service_name, valid_topic, valid_topic_pattern,
    };

    #[test]
    fn a_pattern_covers_the_patterns_whose_topics_it_all_matches() {
        for (outer, inner) in [
            (">", ">"),
            (">", "a.*"),
            ("a.>", "a.b.>"),
            ("a.>", "a.*"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("*.b", "x.b"),
        ] {
            assert!(pattern_covers(outer, inner), "{outer} covers {inner}");
        }
        for (outer, inner) in [
            ("a.*", "a.>"),
            ("a.*", ">"),
            ("a.b", "a.*"),
            ("a.>", "a"),
            ("a.>", ">"),
            ("a.*", "a.b.c"),
            ("*.b", "*.c"),
        ] {
            assert!(
                !pattern_covers(outer, inner),
                "{outer} does not cover {inner}"
            );
        }
    }

    #[test]
    fn topics_are_dotted_tokens_and_patterns_take_nats_wildcards() {
        for ok in ["orders", "orders.created", "a-b.c_d.9"] {
            assert!(valid_topic(ok), "{ok}");
            assert!(valid_topic_pattern(ok), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "ä", "a/b"] {
            assert!(!valid_topic(bad), "{bad}");
        }
        for ok in ["*", ">", "orders.*", "orders.>", "*.created", "a.*.c.>"] {
            assert!(valid_topic_pattern(ok), "{ok}");
        }
        for bad in ["", "a.>.b", ">.a", "a.**", "a.b*", "a..b"] {
            assert!(!valid_topic_pattern(bad), "{bad}");
        }
        for (pattern, topic, matches) in [
            ("orders.created", "orders.created", true),
            ("orders.*", "orders.created", true),
            ("orders.*", "orders.created.eu", false),
            ("orders.>", "orders.created.eu", true),
            ("orders.>", "orders", false),
            ("*", "orders", true),
            ("*", "orders.created", false),
            (">", "orders.created", true),
            ("*.created", "orders.created", true),
            ("orders.created", "orders", false),
            ("orders", "orders.created", false),
        ] {
            assert_eq!(
                topic_matches(pattern, topic),
                matches,
                "{pattern} ~ {topic}"
            );
        }
    }

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
