//! FUSE request sequences through the descriptor-chain decoder and the passthrough filesystem.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vufsd_fuzz::harness::run(data));
