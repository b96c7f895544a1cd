#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autopoiesis::fuzzing::approvals(data));
