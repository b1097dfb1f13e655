//! ModelRef parsing never panics, and a parsed ref survives normalization.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = api::model_ref::ModelRef::parse(s) {
        let again = api::model_ref::ModelRef::parse(&r.to_string()).expect("a normalized ref parses");
        assert_eq!(again, r);
        let _ = r.default_id();
    }
});
