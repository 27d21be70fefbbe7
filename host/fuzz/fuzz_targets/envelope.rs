//! Request envelopes: whatever the bytes, parsing answers a request or a
//! bad-request error without panicking; a request is a JSON object, read
//! as a JSON parser reads the same bytes; the quick reader of plain
//! requests reads nothing but what serde_json reads, and reads it the same; and every answer the host writes
//! by hand around the client's raw id (success or error) is valid JSON
//! carrying that id back unchanged. Numbers are compared as written: JSON
//! allows `1e999`, and the host echoes an id as the client wrote it.
#![no_main]

use std::collections::HashMap;

use ferry_fuzz::core::{ErrorBody, ErrorCode};
use ferry_fuzz::doors::envelope::{self, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

type Object<'a> = HashMap<String, &'a RawValue>;

/// The fields of one response frame, after checking its length prefix and
/// that the whole of it is JSON.
fn answer(frame: &[u8]) -> Object<'_> {
    let (len, body) = frame.split_at(4);
    assert_eq!(
        u32::from_be_bytes(len.try_into().unwrap()) as usize,
        body.len()
    );
    serde_json::from_slice::<serde::de::IgnoredAny>(body).expect("the host wrote invalid JSON");
    serde_json::from_slice(body).expect("the host wrote something other than an object")
}

fn text<'a>(object: &Object<'a>, key: &str) -> &'a str {
    object.get(key).map_or("null", |raw| raw.get())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(quick) = envelope::quick::read(text)
    {
        match Request::parse_with_serde(text) {
            Ok(serde) => assert_eq!(quick, serde, "the quick reader and serde_json differ"),
            Err(e) => panic!("the quick reader took what serde_json refuses: {e}"),
        }
    }
    match Request::parse(data) {
        Ok(request) => {
            let whole: Object =
                serde_json::from_slice(data).expect("accepted, but not a JSON object");
            let id = request.id();
            assert_eq!(text(&whole, "id"), id);
            assert!(
                matches!(id.as_bytes()[0], b'"' | b'-' | b'0'..=b'9'),
                "id {id}"
            );
            if text(&whole, "params") != "null" {
                assert_eq!(text(&whole, "params"), request.params_json());
            }
            let _ = request.service(None);
            let _ = request.service(Some("echo"));
            let frame = envelope::success_frame(id, request.params_json());
            let ok = answer(&frame);
            assert_eq!(text(&ok, "id"), id);
            assert_eq!(text(&ok, "result"), request.params_json());
            let message = String::from_utf8_lossy(data);
            let frame =
                envelope::error_frame(id, &ErrorBody::new(ErrorCode::Internal, message.clone()));
            let failed = answer(&frame);
            assert_eq!(text(&failed, "id"), id);
            let error: HashMap<String, String> =
                serde_json::from_str(text(&failed, "error")).unwrap();
            assert_eq!(error["message"], message);
        }
        Err(bad) => {
            let frame = envelope::error_frame(
                bad.id,
                &ErrorBody::new(ErrorCode::BadRequest, bad.message.clone()),
            );
            let failed = answer(&frame);
            assert_eq!(text(&failed, "id"), bad.id);
            let first = data.iter().find(|b| !b.is_ascii_whitespace());
            if bad.id != "null" {
                assert_eq!(
                    first,
                    Some(&b'{'),
                    "an id salvaged from something other than an object"
                );
            }
        }
    }
});
