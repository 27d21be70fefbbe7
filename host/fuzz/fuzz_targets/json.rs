//! The JSON check on plugins' answers: whatever the text, the scan's
//! verdict, when it gives one, is serde_json's (above all, it never takes
//! what serde_json refuses: the host writes what it takes into envelopes
//! as it is), `check_value` always agrees with serde_json, and `one_value`
//! answers what serde_json reads as a raw value.
#![no_main]

use ferry_fuzz::core::json;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let serde = serde_json::from_str::<IgnoredAny>(text).is_ok();
    if let Some(scanned) = json::scan(data) {
        assert_eq!(scanned, serde, "scan and serde_json disagree on {text:?}");
    }
    assert_eq!(json::check_value(text).is_ok(), serde, "{text:?}");
    let raw = serde_json::from_str::<&serde_json::value::RawValue>(text);
    assert_eq!(
        json::one_value(text).ok(),
        raw.ok().map(|raw| raw.get()),
        "{text:?}"
    );
});
