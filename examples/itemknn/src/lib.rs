//! itemknn: an example external plugin for recohost, item-based kNN. Generated with
//! `recohost plugin new itemknn`, then `src/model.rs` replaced and the request's history
//! passed to the model here; it depends on nothing from the recohost repository.
//!
//! The algorithm lives in `model.rs`, plain Rust with no WebAssembly in it, tested natively
//! with `cargo test`. This file only binds it to the contract in `wit/strategy.wit`
//! (package `recohost:strategy@1.0.0`) for the WebAssembly build:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! recohost plugin check target/wasm32-wasip2/release/itemknn.wasm
//! ```

pub mod model;

#[cfg(target_arch = "wasm32")]
mod component {
    use std::cell::RefCell;

    use crate::model::{Event, Kind, Model, Settings};

    wit_bindgen::generate!({ world: "strategy", path: "wit" });

    use exports::recohost::strategy::plugin::Guest;
    use recohost::strategy::host_log::{Level, log};
    use recohost::strategy::types::{
        EventKind, Feedback, Item, PluginInfo, Request, Scored, StrategyError, TrainingReport,
    };

    thread_local! {
        /// The instance's one model; `None` until `configure`. The host never shares an
        /// instance between threads, and moves models between instances with save/load.
        static MODEL: RefCell<Option<Model>> = const { RefCell::new(None) };
    }

    fn with_model<R>(
        call: impl FnOnce(&mut Model) -> Result<R, String>,
    ) -> Result<R, StrategyError> {
        MODEL.with(|slot| match slot.borrow_mut().as_mut() {
            Some(model) => call(model).map_err(StrategyError::InvalidInput),
            None => Err(StrategyError::NotReady(
                "configure has not been called".into(),
            )),
        })
    }

    fn event(feedback: &Feedback) -> Event {
        Event {
            user: feedback.user,
            item: feedback.item,
            kind: match feedback.kind {
                EventKind::Rate => Kind::Rate,
                EventKind::Click => Kind::Click,
                EventKind::View => Kind::View,
                EventKind::Purchase => Kind::Purchase,
            },
            value: feedback.value,
            timestamp: feedback.timestamp,
        }
    }

    fn report(events_used: usize) -> TrainingReport {
        TrainingReport {
            events_used: events_used as u64,
            message: String::new(),
        }
    }

    struct Component;

    impl Guest for Component {
        fn describe() -> PluginInfo {
            PluginInfo {
                name: "itemknn".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: crate::model::DESCRIPTION.into(),
                predicts_ratings: false,
            }
        }

        fn configure(config_json: String, catalog: Vec<Item>) -> Result<(), StrategyError> {
            let settings =
                Settings::from_json(&config_json).map_err(StrategyError::InvalidInput)?;
            log(
                Level::Info,
                &format!("configured for {} items", catalog.len()),
            );
            MODEL.with(|slot| *slot.borrow_mut() = Some(Model::new(settings, catalog.len())));
            Ok(())
        }

        fn train(events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
            let events: Vec<Event> = events.iter().map(event).collect();
            with_model(|model| model.train(&events)).map(report)
        }

        fn update(events: Vec<Feedback>) -> Result<TrainingReport, StrategyError> {
            let events: Vec<Event> = events.iter().map(event).collect();
            with_model(|model| model.update(&events)).map(report)
        }

        fn recommend(request: Request) -> Result<Vec<Scored>, StrategyError> {
            // The model scores from the user's history, which the host sends with every
            // request (newest first), including events no update has delivered yet.
            let history: Vec<u32> = request.history.iter().map(|f| f.item).collect();
            with_model(|model| {
                Ok(model
                    .recommend(&history, request.count as usize, &request.exclude)
                    .into_iter()
                    .map(|(item, score)| Scored { item, score })
                    .collect())
            })
        }

        fn predict(_user: u32, _items: Vec<u32>) -> Result<Vec<f32>, StrategyError> {
            Err(StrategyError::Unsupported(
                "itemknn ranks items; it does not predict ratings".into(),
            ))
        }

        fn save() -> Result<Vec<u8>, StrategyError> {
            with_model(|model| Ok(model.save()))
        }

        fn load(snapshot: Vec<u8>) -> Result<(), StrategyError> {
            with_model(|model| model.load(&snapshot))
        }
    }

    export!(Component);
}
