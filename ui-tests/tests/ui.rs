//! Compile-time diagnostics of catga's macros, checked with trybuild.
//!
//! `tests/pass/*.rs` must compile (and run); every `tests/fail/*.rs` must fail
//! with exactly the diagnostic in the `.stderr` next to it. Regenerate the
//! expected output with `TRYBUILD=overwrite cargo test -p catga-ui-tests`,
//! then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/fail/*.rs");
}
