//! PostgreSQL placeholder numbering over any text: it never panics (every
//! slice is on a character boundary), never loops, and numbers at most one
//! placeholder per `?`, from `$1` up without gaps.
#![no_main]

use ferry_fuzz::resources::database::dialect::number_placeholders;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let out = number_placeholders(sql);
    if sql.contains("??") {
        // `??` shortens the text by one where it is an operator, and not
        // inside a string: only the sum is known.
        assert!(
            out.len() + sql.matches("??").count() >= sql.len(),
            "{sql:?} -> {out:?}"
        );
        return;
    }
    // Each placeholder turns one `?` into `$k`: the text grows by the
    // digits of 1..=n exactly.
    let delta = out.len() - sql.len();
    let (mut n, mut grown) = (0usize, 0usize);
    while grown < delta {
        n += 1;
        grown += n.to_string().len();
    }
    assert_eq!(grown, delta, "{sql:?} -> {out:?}");
    assert!(n <= sql.matches('?').count(), "{sql:?} -> {out:?}");
    if n > 0 {
        assert!(out.contains(&format!("${n}")), "{sql:?} -> {out:?}");
    }
});
