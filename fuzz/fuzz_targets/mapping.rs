//! Target (b): the server's handling of an arbitrary mapping image (header and slots).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shmrpc::fuzzing::mapping_image(data);
});
