//! `log_text`: see the table in tests/support/fuzzing.rs (the harness, shared with the
//! corpus replay test tests/fuzz_corpus.rs).
#![no_main]

#[path = "../../tests/support/fuzzing.rs"]
mod fuzzing;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::log_text(data));
