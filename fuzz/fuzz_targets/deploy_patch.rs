#![no_main]

#[path = "../operator_checks.rs"]
mod operator_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| operator_checks::deploy_patch(data));
