//! Prints the WIT reference rendered from `wit/plugin.wit`;
//! `make wit-reference` writes it to `wit/REFERENCE.md`.

fn main() {
    match ferry_tests::wit_reference::render(ferry_tests::wit_reference::wit_dir()) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("wit-reference: {e:#}");
            std::process::exit(1);
        }
    }
}
