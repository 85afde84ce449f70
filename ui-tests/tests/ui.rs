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

/// The rustflags trybuild (1.0.122) gives the cargo that checks the cases:
/// its own (`--cfg trybuild --verbose -A dead_code`) and, for the cases, the
/// width of the diagnostics (`--diagnostic-width=140`).
const TRYBUILD_FLAGS: &[&str] = &[
    "--cfg",
    "trybuild",
    "--verbose",
    "-A",
    "dead_code",
    "--diagnostic-width=140",
];

#[test]
fn ui() {
    // trybuild first checks the dependencies with its own flags, then checks
    // the cases with one more (`--diagnostic-width=140`): other flags, so
    // cargo checked catga's whole dependency tree a second time (~half of
    // this test). `CARGO_ENCODED_RUSTFLAGS` outranks the `--config` flags
    // trybuild passes (and trybuild only clears `RUSTFLAGS`), so both steps
    // get the same flags and the dependencies are checked once. Left alone
    // when set by the caller (e.g. for coverage).
    if std::env::var_os("CARGO_ENCODED_RUSTFLAGS").is_none() {
        // SAFETY: this binary's only test, before trybuild starts any thread
        // or child; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("CARGO_ENCODED_RUSTFLAGS", TRYBUILD_FLAGS.join("\x1f")) };
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/fail/*.rs");
}
