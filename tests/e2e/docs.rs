//! Documentation that is generated: `wit/REFERENCE.md` must say what
//! `wit/plugin.wit` says.

use ferry_tests::wit_reference::{render, wit_dir};

#[test]
fn the_wit_reference_matches_the_wit() {
    let generated = render(wit_dir()).expect("wit/plugin.wit parses");
    let written = std::fs::read_to_string(wit_dir().join("REFERENCE.md")).unwrap_or_default();
    assert!(
        generated == written,
        "wit/REFERENCE.md is out of date with wit/plugin.wit: run `make wit-reference`"
    );
    // Every interface of the package is in it.
    for interface in ["types", "log", "sql", "config", "health", "handler"] {
        assert!(
            written.contains(&format!("## interface `{interface}`")),
            "{interface}"
        );
    }
}
