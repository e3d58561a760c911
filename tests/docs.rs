//! docs/options.md is generated from the CLI definition; this test keeps it current.
//! Regenerate with `VUFSD_BLESS=1 cargo test --test docs`.

use std::path::Path;

#[test]
fn options_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/options.md");
    let want = vufsd::cli::options_markdown();
    if std::env::var_os("VUFSD_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/options.md is stale: run `VUFSD_BLESS=1 cargo test --test docs` and commit it"
    );
}
