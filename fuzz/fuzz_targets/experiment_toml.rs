//! An experiment file: parsing, weights, namespaces and every other check must refuse
//! anything malformed with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plugins = ["collaborative".to_string(), "hybrid".to_string()];
    let path = std::path::Path::new("/fuzz/experiment.toml");
    let _ = recohost::experiments::definition::Experiment::parse(path, text, &plugins);
});
