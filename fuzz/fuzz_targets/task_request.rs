//! `POST /v2/tasks` bodies: parsing and validation never panic and always give a typed answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = orchestratord::config::RawConfig::default().validate(std::path::Path::new("/tmp")).expect("default config");
    match orchestratord::admission::parse(data) {
        Ok(req) => {
            if let Err(e) = orchestratord::admission::validate(req, &cfg) {
                assert_eq!(e.code, api::ErrorCode::InvalidParams);
            }
        }
        Err(e) => assert_eq!(e.code, api::ErrorCode::InvalidParams),
    }
});
