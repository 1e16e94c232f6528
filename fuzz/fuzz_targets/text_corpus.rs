#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| grokforge_fuzz::text_corpus(data));
