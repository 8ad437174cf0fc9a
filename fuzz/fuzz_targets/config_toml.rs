//! The server's TOML config: parsing and validation must refuse anything malformed with an
//! error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/fuzz/recohost.toml");
    if let Ok(config) = recohost::config::Config::parse(text, path) {
        let _ = config.validate();
    }
});
