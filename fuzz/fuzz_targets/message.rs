//! Target (a): validate and read request/reply bytes as several message types.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shmrpc::fuzzing::message_bytes(data);
});
