#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autopoiesis::fuzzing::worker_lines(data));
