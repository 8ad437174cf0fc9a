//! An event as `POST /events` decodes and validates it (JSON, IDs, type, rating, timestamp)
//! against a small catalog: refused with an error or accepted, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recohost::catalog::Catalog;
use recohost::config::EventsConfig;
use recohost::store::ItemRow;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::new(
            (1..=20)
                .map(|i| ItemRow {
                    external_id: i.to_string(),
                    title: format!("Item {i}"),
                    tags: vec!["tag".into()],
                })
                .collect(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = recohost::api::events::decode_event(data, catalog(), &EventsConfig::default());
});
