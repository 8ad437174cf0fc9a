//! Guest SDK for recohost strategy plugins.
//!
//! A plugin is a type that implements [`Strategy`] plus one macro call:
//!
//! ```ignore
//! struct MyModel { /* ... */ }
//! impl recohost_plugin_sdk::Strategy for MyModel { /* ... */ }
//! recohost_plugin_sdk::export_strategy!(MyModel);
//! ```
//!
//! The SDK hides the WIT bindings (`wit/strategy.wit`, package `recohost:strategy`): it keeps
//! the one model of the instance in a thread-local, checks that `configure` ran before anything
//! else, and turns the contract's free functions into method calls. The data types are the ones
//! generated from the WIT, re-exported here; they are plain Rust structs, so the algorithm can
//! be unit-tested and benchmarked natively without any WebAssembly.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "strategy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_strategy_bindings",
        default_bindings_module: "recohost_plugin_sdk::bindings",
        additional_derives: [PartialEq],
        // Written by hand in `abi`, which takes their lists of events without copying them.
        skip: ["recommend", "train", "update"],
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod abi;

pub use bindings::recohost::strategy::host_log::Level as LogLevel;
pub use bindings::recohost::strategy::types::{
    EventKind, Feedback, Item, ItemIndex, PluginInfo, Request, Scored, StrategyError,
    TrainingReport, UserIndex,
};

#[cfg(feature = "ndarray")]
pub mod arrays;
pub mod by_user;
pub mod config;
pub mod kernels;
pub mod snapshot;
mod state;
pub mod testing;
pub mod topk;
pub mod weights;

#[doc(hidden)]
pub use state::InstanceState;

/// The version of the WIT package this SDK was built against.
pub const WIT_VERSION: &str = "1.0.0";

/// A recommendation strategy: one model per WebAssembly instance.
///
/// The host calls [`Strategy::configure`] once, then either [`Strategy::train`] or
/// [`Strategy::load`], then any mix of the rest. See `wit/strategy.wit` for the full contract.
pub trait Strategy: Sized + 'static {
    /// Name, version and description of the plugin.
    fn describe() -> PluginInfo;

    /// Builds an untrained model from the plugin's config (a JSON object) and the item catalog.
    fn configure(config_json: &str, catalog: Vec<Item>) -> Result<Self, StrategyError>;

    /// Learns from the full event history, replacing what was learned before.
    fn train(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError>;

    /// Learns from a batch of new events on top of the current model.
    fn update(&mut self, events: Vec<Feedback>) -> Result<TrainingReport, StrategyError>;

    /// Up to `request.count` items, best first, none excluded, no duplicates, finite scores.
    fn recommend(&self, request: &Request) -> Result<Vec<Scored>, StrategyError>;

    /// Rating estimates for `items`; ranking-only models keep the default.
    fn predict(&self, _user: UserIndex, _items: &[ItemIndex]) -> Result<Vec<f32>, StrategyError> {
        Err(StrategyError::Unsupported(
            "this plugin ranks items but does not predict ratings".into(),
        ))
    }

    /// Serializes the model for [`Strategy::load`] in another instance.
    fn save(&self) -> Result<Vec<u8>, StrategyError>;

    /// Replaces the model with one produced by [`Strategy::save`].
    fn load(&mut self, snapshot: &[u8]) -> Result<(), StrategyError>;
}

/// Writes a line to the host's log (inside WebAssembly) or to stderr (native tests).
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::recohost::strategy::host_log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Checks that an event refers to an item of a catalog of `catalog_len` items.
pub fn check_item(item: ItemIndex, catalog_len: usize) -> Result<usize, StrategyError> {
    let index = item as usize;
    if index < catalog_len {
        Ok(index)
    } else {
        Err(StrategyError::InvalidInput(format!(
            "item index {item} is outside the catalog of {catalog_len} items"
        )))
    }
}

/// Exports a [`Strategy`] implementation as the component's `recohost:strategy/plugin`.
///
/// Invoke it once, in the crate that is compiled to the `.wasm` component.
#[macro_export]
macro_rules! export_strategy {
    ($strategy:ty) => {
        struct __RecohostStrategyExport;

        ::std::thread_local! {
            static __RECOHOST_STATE: $crate::InstanceState<$strategy> =
                const { $crate::InstanceState::new() };
        }

        impl $crate::bindings::exports::recohost::strategy::plugin::Guest
            for __RecohostStrategyExport
        {
            fn describe() -> $crate::PluginInfo {
                <$strategy as $crate::Strategy>::describe()
            }
            fn configure(
                config_json: ::std::string::String,
                catalog: ::std::vec::Vec<$crate::Item>,
            ) -> ::std::result::Result<(), $crate::StrategyError> {
                __RECOHOST_STATE.with(|state| state.configure(&config_json, catalog))
            }
            fn predict(
                user: $crate::UserIndex,
                items: ::std::vec::Vec<$crate::ItemIndex>,
            ) -> ::std::result::Result<::std::vec::Vec<f32>, $crate::StrategyError> {
                __RECOHOST_STATE.with(|state| state.with_model(|model| <$strategy as $crate::Strategy>::predict(model, user, &items)))
            }
            fn save() -> ::std::result::Result<::std::vec::Vec<u8>, $crate::StrategyError> {
                __RECOHOST_STATE.with(|state| state.with_model(|model| <$strategy as $crate::Strategy>::save(model)))
            }
            fn load(
                snapshot: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<(), $crate::StrategyError> {
                __RECOHOST_STATE.with(|state| state.with_model_mut(|model| <$strategy as $crate::Strategy>::load(model, &snapshot)))
            }
        }

        $crate::bindings::__export_strategy_bindings!(__RecohostStrategyExport with_types_in $crate::bindings);

        // `recommend`, `train` and `update` are exported by hand (see `abi`); the names are the
        // ones wit-bindgen derives from `wit/strategy.wit` and must follow its package version.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "recohost:strategy/plugin@1.0.0#recommend")]
        unsafe extern "C" fn __recohost_export_recommend(
            user_tag: i32,
            user: i32,
            count: i32,
            history: *mut u8,
            history_len: usize,
            exclude: *mut u8,
            exclude_len: usize,
        ) -> *mut u8 {
            // SAFETY: called by the canonical ABI with `recommend`'s flattened arguments.
            unsafe {
                $crate::abi::recommend(user_tag, user, count, history, history_len, exclude, exclude_len, |request| {
                    __RECOHOST_STATE.with(|state| state.with_model(|model| <$strategy as $crate::Strategy>::recommend(model, request)))
                })
            }
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "cabi_post_recohost:strategy/plugin@1.0.0#recommend")]
        unsafe extern "C" fn __recohost_post_return_recommend(area: *mut u8) {
            // SAFETY: called by the canonical ABI with what the export above returned.
            unsafe { $crate::abi::recommend_post_return(area) }
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "recohost:strategy/plugin@1.0.0#train")]
        unsafe extern "C" fn __recohost_export_train(events: *mut u8, events_len: usize) -> *mut u8 {
            // SAFETY: called by the canonical ABI with `train`'s flattened arguments.
            unsafe {
                $crate::abi::learn(events, events_len, |events| {
                    __RECOHOST_STATE.with(|state| state.with_model_mut(|model| <$strategy as $crate::Strategy>::train(model, events)))
                })
            }
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "cabi_post_recohost:strategy/plugin@1.0.0#train")]
        unsafe extern "C" fn __recohost_post_return_train(area: *mut u8) {
            // SAFETY: called by the canonical ABI with what the export above returned.
            unsafe { $crate::abi::learn_post_return(area) }
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "recohost:strategy/plugin@1.0.0#update")]
        unsafe extern "C" fn __recohost_export_update(events: *mut u8, events_len: usize) -> *mut u8 {
            // SAFETY: called by the canonical ABI with `update`'s flattened arguments.
            unsafe {
                $crate::abi::learn(events, events_len, |events| {
                    __RECOHOST_STATE.with(|state| state.with_model_mut(|model| <$strategy as $crate::Strategy>::update(model, events)))
                })
            }
        }

        #[cfg(target_arch = "wasm32")]
        #[unsafe(export_name = "cabi_post_recohost:strategy/plugin@1.0.0#update")]
        unsafe extern "C" fn __recohost_post_return_update(area: *mut u8) {
            // SAFETY: called by the canonical ABI with what the export above returned.
            unsafe { $crate::abi::learn_post_return(area) }
        }
    };
}
