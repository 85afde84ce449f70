//! Compile-time diagnostics of catga's macros, checked with trybuild.
//!
//! Every `tests/fail/*.rs` must fail with exactly the diagnostic in the
//! `.stderr` next to it. Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p catga-ui-tests`, then read every changed
//! `.stderr`.
//!
//! The cases that must compile and run, `tests/pass/*.rs`, are not given to
//! trybuild: each is a `[[test]]` binary of this crate (see `Cargo.toml`), so
//! that trybuild only has to `cargo check` (a single pass case would make it
//! build and link catga's whole dependency tree in its own target dir).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/fail/*.rs");
}
