//! One instance of a plugin: a wasmtime `Store` and the component's exports, with every call
//! under the plugin's time budget and memory cap.
//!
//! A trap (panic, time budget, memory cap) poisons the instance for good: the caller must drop
//! it. [`CallError::is_trap`] says which errors those are.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Func};
use wasmtime::{Store, StoreLimitsBuilder, Trap};

use super::bindings::{
    Feedback, InstanceState, Item, PluginInfo, Request, Scored, Strategy, StrategyError,
    StrategyPre, TrainingReport,
};
use super::engine::PluginEngine;
use super::fast_abi::{FastFeedback, LearnFn, RecommendFn, RequestArg};
use super::limits::PluginLimits;

#[derive(Debug, Error)]
pub enum CallError {
    /// The plugin answered with an error: the instance is still usable.
    #[error("plugin `{plugin}` refused `{call}`: {error}")]
    Refused {
        plugin: String,
        call: &'static str,
        error: StrategyError,
    },
    /// The answer broke a limit or a check (too many items, snapshot too large, wrong
    /// length): the instance is still usable, the answer is not.
    #[error("plugin `{plugin}` answered `{call}` out of bounds: {reason}")]
    OverLimit {
        plugin: String,
        call: &'static str,
        reason: String,
    },
    /// The instance trapped and must be discarded.
    #[error("plugin `{plugin}` trapped in `{call}`: {reason}")]
    Trapped {
        plugin: String,
        call: &'static str,
        reason: String,
    },
}

impl CallError {
    pub fn is_trap(&self) -> bool {
        matches!(self, Self::Trapped { .. })
    }
}

pub struct PluginInstance {
    store: Store<InstanceState>,
    exports: Strategy,
    /// The hot calls, type-checked at instantiation against [`super::fast_abi`]'s argument
    /// types (the generated `call_*` would copy feedback lists field by field).
    hot: HotCalls,
    limits: Arc<PluginLimits>,
    /// Model version loaded into this instance (0: none).
    pub model_version: u64,
}

impl PluginInstance {
    /// A fresh instance, not yet configured.
    pub fn new(
        engine: &PluginEngine,
        pre: &StrategyPre<InstanceState>,
        plugin: Arc<str>,
        limits: Arc<PluginLimits>,
    ) -> anyhow::Result<Self> {
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes())
            .trap_on_grow_failure(true)
            .instances(4)
            .tables(16)
            .memories(4)
            .build();
        let state = InstanceState::new(plugin, store_limits, engine.observes_network());
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(PluginEngine::ticks(limits.train()));
        let exports = pre
            .instantiate(&mut store)
            .map_err(|e| anyhow::anyhow!("cannot instantiate: {e:#}"))?;
        let hot = HotCalls::new(&exports, &store)?;
        Ok(Self {
            store,
            exports,
            hot,
            limits,
            model_version: 0,
        })
    }

    fn call<R>(
        &mut self,
        call: &'static str,
        budget: Duration,
        run: impl FnOnce(
            &Strategy,
            &mut Store<InstanceState>,
        ) -> wasmtime::Result<Result<R, StrategyError>>,
    ) -> Result<R, CallError> {
        self.store.set_epoch_deadline(PluginEngine::ticks(budget));
        self.store.data_mut().log_budget = self.limits.max_log_bytes_per_call;
        let result = run(&self.exports, &mut self.store);
        // The plugin's name is only needed for an error: no allocation on the happy path.
        let plugin = || self.store.data().plugin.to_string();
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Refused {
                plugin: plugin(),
                call,
                error,
            }),
            Err(error) => {
                let reason = match error.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => {
                        format!("exceeded its time budget of {} ms", budget.as_millis())
                    }
                    _ if format!("{error:?}").contains("forcing trap when growing memory") => {
                        format!("exceeded its memory limit of {} MiB", self.limits.memory_mb)
                    }
                    _ => format!("{error:#}"),
                };
                Err(CallError::Trapped {
                    plugin: plugin(),
                    call,
                    reason,
                })
            }
        }
    }

    /// The largest linear memory the instance has had, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.store.data().limits.peak_memory_bytes
    }

    /// Log messages dropped over the per-call limit since the instance began.
    pub fn log_messages_dropped(&self) -> u64 {
        self.store.data().log_messages_dropped
    }

    /// Network uses the sandbox refused since the instance began.
    pub fn denied_network(&self) -> Vec<String> {
        self.store
            .data()
            .denied_network
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn describe(&mut self) -> Result<PluginInfo, CallError> {
        let budget = self.limits.recommend();
        self.call("describe", budget, |e, s| {
            e.recohost_strategy_plugin().call_describe(s).map(Ok)
        })
    }

    pub fn configure(&mut self, config_json: &str, catalog: &[Item]) -> Result<(), CallError> {
        let budget = self.limits.train();
        self.call("configure", budget, |e, s| {
            e.recohost_strategy_plugin()
                .call_configure(s, config_json, catalog)
        })
    }

    pub fn train(&mut self, events: &[Feedback]) -> Result<TrainingReport, CallError> {
        let budget = self.limits.train();
        let train = self.hot.train;
        self.call("train", budget, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let train = unsafe { LearnFn::new_unchecked(train) };
            Ok(train.call(s, (FastFeedback::slice(events),))?.0)
        })
    }

    pub fn update(&mut self, events: &[Feedback]) -> Result<TrainingReport, CallError> {
        let budget = self.limits.update();
        let update = self.hot.update;
        self.call("update", budget, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let update = unsafe { LearnFn::new_unchecked(update) };
            Ok(update.call(s, (FastFeedback::slice(events),))?.0)
        })
    }

    /// An [`CallError::OverLimit`] for `call`.
    fn over_limit(&self, call: &'static str, reason: String) -> CallError {
        CallError::OverLimit {
            plugin: self.store.data().plugin.to_string(),
            call,
            reason,
        }
    }

    /// The plugin's answer, refused whole when it is longer than `limits.max_result_items`.
    /// (The guest's memory cap bounds what the host copies out before this check.)
    pub fn recommend(&mut self, request: &Request) -> Result<Vec<Scored>, CallError> {
        self.recommend_within(request, self.limits.recommend())
    }

    /// [`Self::recommend`] under a budget shorter than the plugin's own (health probes).
    pub fn recommend_within(
        &mut self,
        request: &Request,
        budget: Duration,
    ) -> Result<Vec<Scored>, CallError> {
        let recommend = self.hot.recommend;
        let scored = self.call("recommend", budget, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let recommend = unsafe { RecommendFn::new_unchecked(recommend) };
            Ok(recommend.call(s, (RequestArg::new(request),))?.0)
        })?;
        let cap = self.limits.max_result_items;
        if scored.len() > cap {
            return Err(self.over_limit(
                "recommend",
                format!(
                    "returned {} items, over its limit of {cap} (limits.max_result_items)",
                    scored.len()
                ),
            ));
        }
        Ok(scored)
    }

    /// One estimate per item asked about, or an error.
    pub fn predict(&mut self, user: u32, items: &[u32]) -> Result<Vec<f32>, CallError> {
        let budget = self.limits.recommend();
        let estimates = self.call("predict", budget, |e, s| {
            e.recohost_strategy_plugin().call_predict(s, user, items)
        })?;
        if estimates.len() != items.len() {
            return Err(self.over_limit(
                "predict",
                format!(
                    "returned {} estimates for {} items",
                    estimates.len(),
                    items.len()
                ),
            ));
        }
        Ok(estimates)
    }

    pub fn save(&mut self) -> Result<Vec<u8>, CallError> {
        let budget = self.limits.train();
        let snapshot = self.call("save", budget, |e, s| {
            e.recohost_strategy_plugin().call_save(s)
        })?;
        if snapshot.len() > self.limits.max_snapshot_bytes() {
            return Err(self.over_limit(
                "save",
                format!(
                    "returned a {} MiB snapshot, over its limit of {} MiB (limits.max_snapshot_mb)",
                    snapshot.len() / (1024 * 1024),
                    self.limits.max_snapshot_mb
                ),
            ));
        }
        Ok(snapshot)
    }

    pub fn load(&mut self, snapshot: &[u8]) -> Result<(), CallError> {
        let budget = self.limits.train();
        self.call("load", budget, |e, s| {
            e.recohost_strategy_plugin().call_load(s, snapshot)
        })
    }
}

/// The calls that [`super::fast_abi`] replaces, through wasmtime's generated code: what its
/// tests compare with.
#[cfg(test)]
impl PluginInstance {
    pub(super) fn generated_learn(&mut self, train: bool, events: &[Feedback]) -> TrainingReport {
        let plugin = self.exports.recohost_strategy_plugin();
        let report = if train {
            plugin.call_train(&mut self.store, events)
        } else {
            plugin.call_update(&mut self.store, events)
        };
        report.expect("no trap").expect("no error")
    }

    pub(super) fn generated_recommend(&mut self, request: &Request) -> Vec<Scored> {
        let plugin = self.exports.recohost_strategy_plugin();
        let scored = plugin.call_recommend(&mut self.store, request);
        scored.expect("no trap").expect("no error")
    }
}

/// `recommend`, `train` and `update` of one instance.
#[derive(Clone, Copy)]
struct HotCalls {
    recommend: Func,
    train: Func,
    update: Func,
}

impl HotCalls {
    /// The instance's functions, each checked once against the argument types of
    /// [`super::fast_abi`] (the same WIT types as the generated bindings check).
    fn new(exports: &Strategy, store: &Store<InstanceState>) -> anyhow::Result<Self> {
        let plugin = exports.recohost_strategy_plugin();
        let recommend = *plugin.func_recommend().func();
        let train = *plugin.func_train().func();
        let update = *plugin.func_update().func();
        let _: RecommendFn<'_> = recommend.typed(store)?;
        for learn in [train, update] {
            let _: LearnFn<'_> = learn.typed(store)?;
        }
        Ok(Self {
            recommend,
            train,
            update,
        })
    }
}

/// Exports of a component, for the contract check.
pub fn export_names(engine: &PluginEngine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine.engine())
        .map(|(name, _)| name.to_string())
        .collect()
}
