//! One instance of a plugin: a wasmtime `Store` and the component's exports, with every call
//! under the plugin's time budget and memory cap.
//!
//! A trap (panic, time budget, memory cap) poisons the instance for good: the caller must drop
//! it. So does an answer the host refused to copy out (over its size, malformed): wasmtime
//! never finished that call. [`CallError::is_trap`] says which errors those are.
//!
//! What a guest can make the host hold is bounded per call: its time (epoch deadline, and
//! [`super::bounded_io`] for waits inside the host), its memory ([`super::limiter`]), and the
//! bytes copied out of it (wasmtime's hostcall fuel, set per call from the answer's limit).

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Func};
use wasmtime::{Store, Trap};

use super::bindings::{
    Feedback, InstanceState, Item, MAX_WASI_RESOURCES, PluginInfo, Request, Scored, Strategy,
    StrategyError, StrategyPre, TrainingReport,
};
use super::bounded_io::BudgetExceeded;
use super::engine::{EpochClock, PluginEngine};
use super::fast_abi::{FastFeedback, LearnFn, RecommendFn, RequestArg};
use super::limiter::MemoryCapExceeded;
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
    /// The instance trapped (a panic, its time budget, its memory cap) and must be discarded.
    #[error("plugin `{plugin}` trapped in `{call}`: {reason}")]
    Trapped {
        plugin: String,
        call: &'static str,
        reason: String,
    },
    /// The host stopped the call (an answer it would not copy out: over its size or
    /// malformed; a host call past its limits): the call never finished, so the instance
    /// must be discarded too.
    #[error("plugin `{plugin}` failed `{call}`: {reason}")]
    Aborted {
        plugin: String,
        call: &'static str,
        reason: String,
    },
}

impl CallError {
    /// Whether the instance is finished: trapped or aborted.
    pub fn is_trap(&self) -> bool {
        matches!(self, Self::Trapped { .. } | Self::Aborted { .. })
    }

    /// Whether the call counts against the plugin's health: traps, time and memory limits,
    /// answers out of bounds. A refusal does not: it is the plugin answering, and a client
    /// could otherwise open the breaker for everyone by sending inputs the plugin refuses.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Refused { .. })
    }
}

pub struct PluginInstance {
    store: Store<InstanceState>,
    exports: Strategy,
    /// The hot calls, type-checked at instantiation against [`super::fast_abi`]'s argument
    /// types (the generated `call_*` would copy feedback lists field by field).
    hot: HotCalls,
    limits: Arc<PluginLimits>,
    clock: EpochClock,
    /// Model version loaded into this instance (0: none).
    pub model_version: u64,
}

impl PluginInstance {
    /// A fresh instance, not yet configured; its start functions run under `budget`.
    pub fn new(
        engine: &PluginEngine,
        pre: &StrategyPre<InstanceState>,
        plugin: Arc<str>,
        limits: Arc<PluginLimits>,
        budget: Duration,
    ) -> anyhow::Result<Self> {
        let clock = engine.clock().clone();
        let state = InstanceState::new(
            plugin,
            limits.memory_bytes(),
            engine.observes_network(),
            clock.clone(),
        );
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.set_max_component_handles(MAX_WASI_RESOURCES);
        store.set_epoch_deadline(PluginEngine::ticks(budget));
        store.set_hostcall_fuel(CALL_FUEL);
        store.data_mut().deadline_tick = clock.now() + PluginEngine::ticks(budget);
        let exports = pre
            .instantiate(&mut store)
            .map_err(|e| anyhow::anyhow!("cannot instantiate: {e:#}"))?;
        let hot = HotCalls::new(&exports, &store)?;
        Ok(Self {
            store,
            exports,
            hot,
            limits,
            clock,
            model_version: 0,
        })
    }

    /// Runs one call under `budget`. `answer` is the most the host copies out of the guest
    /// for it (the answer itself; an error's text gets [`ERROR_FUEL`] more; at least
    /// [`CALL_FUEL`] in all), with what limits it, for the error that names it.
    fn call<R>(
        &mut self,
        call: &'static str,
        budget: Duration,
        answer: AnswerLimit,
        run: impl FnOnce(
            &Strategy,
            &mut Store<InstanceState>,
        ) -> wasmtime::Result<Result<R, StrategyError>>,
    ) -> Result<R, CallError> {
        let ticks = PluginEngine::ticks(budget);
        self.store.set_epoch_deadline(ticks);
        // Never below CALL_FUEL: a host call's arguments (a log message) get that much.
        self.store
            .set_hostcall_fuel(answer.bytes.saturating_add(ERROR_FUEL).max(CALL_FUEL));
        let state = self.store.data_mut();
        state.deadline_tick = self.clock.now() + ticks;
        state.log_budget = self.limits.max_log_bytes_per_call;
        state.output.clear();
        let result = run(&self.exports, &mut self.store);
        // The plugin's name is only needed for an error: no allocation on the happy path.
        let plugin = || self.store.data().plugin.to_string();
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Refused {
                plugin: plugin(),
                call,
                error: shortened(error),
            }),
            Err(error) => {
                let trapped = |reason| CallError::Trapped {
                    plugin: plugin(),
                    call,
                    reason,
                };
                if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
                    || error.downcast_ref::<BudgetExceeded>().is_some()
                {
                    Err(trapped(format!(
                        "exceeded its time budget of {} ms",
                        budget.as_millis()
                    )))
                } else if let Some(cap) = error.downcast_ref::<MemoryCapExceeded>() {
                    let allowance = self.store.data().limits.events_allowance;
                    let events = if allowance == 0 {
                        String::new()
                    } else {
                        format!(
                            " and {:.2} MiB for the events it was given",
                            allowance as f64 / (1024.0 * 1024.0)
                        )
                    };
                    Err(trapped(format!(
                        "exceeded its memory limit of {} MiB{events} ({cap})",
                        self.limits.memory_mb
                    )))
                } else if error.downcast_ref::<Trap>().is_some() {
                    // An interpreter's fatal error (a Python traceback) is only on its stderr:
                    // this call's output follows the engine's reason, marked as the plugin's.
                    let output = match self.store.data().output.text() {
                        // Already its last KiB: the end of a traceback is what matters.
                        Some(text) => format!(
                            "\nthe plugin's output before the trap (stdout and stderr): {text}"
                        ),
                        None => String::new(),
                    };
                    Err(trapped(format!(
                        "{}{output}",
                        short_text(&format!("{error:#}"))
                    )))
                } else {
                    // Not a trap of the guest's code: the host refused a host call's request
                    // while the guest ran (it then carries the guest's backtrace), or the
                    // call's answer once it returned (over its size, malformed): then name
                    // the answer's limits.
                    let limit = if error.downcast_ref::<wasmtime::WasmBacktrace>().is_some() {
                        String::new()
                    } else {
                        format!(
                            " (the host copies out at most {} and {} KiB of error text)",
                            answer.names.map_or_else(
                                || format!("{} KiB of answer", answer.bytes / 1024),
                                |names| names.to_string()
                            ),
                            ERROR_FUEL / 1024
                        )
                    };
                    Err(CallError::Aborted {
                        plugin: plugin(),
                        call,
                        // The cause, without the guest backtrace wasmtime puts before it.
                        reason: format!("{}{limit}", short_text(&error.root_cause().to_string())),
                    })
                }
            }
        }
    }

    /// The most memory (linear memories and tables together) the instance has held, in bytes.
    pub fn peak_memory_bytes(&self) -> usize {
        self.store.data().limits.peak_bytes
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
        self.call("describe", budget, AnswerLimit::SMALL, |e, s| {
            e.recohost_strategy_plugin().call_describe(s).map(Ok)
        })
    }

    pub fn configure(&mut self, config_json: &str, catalog: &[Item]) -> Result<(), CallError> {
        self.configure_within(config_json, catalog, self.limits.train())
    }

    /// [`Self::configure`] under another budget (an instance rebuilt on a request's path).
    pub fn configure_within(
        &mut self,
        config_json: &str,
        catalog: &[Item],
        budget: Duration,
    ) -> Result<(), CallError> {
        self.call("configure", budget, AnswerLimit::SMALL, |e, s| {
            e.recohost_strategy_plugin()
                .call_configure(s, config_json, catalog)
        })
    }

    pub fn train(&mut self, events: &[Feedback]) -> Result<TrainingReport, CallError> {
        self.allow_events(events);
        let budget = self.limits.train();
        let train = self.hot.train;
        self.call("train", budget, AnswerLimit::SMALL, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let train = unsafe { LearnFn::new_unchecked(train) };
            Ok(train.call(s, (FastFeedback::slice(events),))?.0)
        })
    }

    pub fn update(&mut self, events: &[Feedback]) -> Result<TrainingReport, CallError> {
        self.allow_events(events);
        let budget = self.limits.update();
        let update = self.hot.update;
        self.call("update", budget, AnswerLimit::SMALL, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let update = unsafe { LearnFn::new_unchecked(update) };
            Ok(update.call(s, (FastFeedback::slice(events),))?.0)
        })
    }

    /// See [`super::limiter::SandboxLimiter::allow_events`].
    fn allow_events(&mut self, events: &[Feedback]) {
        // What the list takes in the guest's memory, by the canonical ABI.
        let bytes = events
            .len()
            .saturating_mul(<Feedback as wasmtime::component::ComponentType>::SIZE32);
        self.store.data_mut().limits.allow_events(bytes);
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
    /// An answer far over it is refused before the host copies any of it (hostcall fuel).
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
        let cap = self.limits.max_result_items;
        let answer = AnswerLimit {
            bytes: cap.saturating_mul(SCORED_BYTES),
            names: Some(LimitName::ResultItems(cap)),
        };
        let scored = self.call("recommend", budget, answer, |_, s| {
            // SAFETY: type-checked against this signature in `HotCalls::new`.
            let recommend = unsafe { RecommendFn::new_unchecked(recommend) };
            Ok(recommend.call(s, (RequestArg::new(request),))?.0)
        })?;
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
        let answer = AnswerLimit {
            bytes: items.len().saturating_mul(4),
            names: Some(LimitName::Estimates(items.len())),
        };
        let estimates = self.call("predict", budget, answer, |e, s| {
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
        let answer = AnswerLimit {
            bytes: self.limits.max_snapshot_bytes(),
            names: Some(LimitName::SnapshotMb(self.limits.max_snapshot_mb)),
        };
        let snapshot = self.call("save", budget, answer, |e, s| {
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
        self.load_within(snapshot, self.limits.train())
    }

    /// [`Self::load`] under another budget (an instance rebuilt on a request's path).
    pub fn load_within(&mut self, snapshot: &[u8], budget: Duration) -> Result<(), CallError> {
        self.call("load", budget, AnswerLimit::SMALL, |e, s| {
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

/// Bytes the host copies out of a guest for an error's text, beyond the answer itself; an
/// error whose text is longer fails the call unread.
const ERROR_FUEL: usize = 64 * 1024;
/// What a call whose answer has no limit of its own may copy out (`describe`, a training
/// report), and the least any call gets: a host call's arguments (a `host-log` message, read
/// in place and cut to 2,000 characters) may be this long.
const CALL_FUEL: usize = 1024 * 1024;
/// Size of a `scored` record in guest memory (`item: u32`, `score: f32`).
const SCORED_BYTES: usize = 8;
/// Characters of a plugin's error text (or a trap's message) kept: enough for any honest
/// message, and the 503 bodies and log lines that carry it stay small.
pub const MAX_ERROR_CHARS: usize = 1_000;

/// The most the host copies out of the guest for one call's answer.
struct AnswerLimit {
    bytes: usize,
    /// What the limit allows, for the error that names it (put in words only then: the
    /// happy path formats nothing).
    names: Option<LimitName>,
}

/// The limit an answer is held to.
enum LimitName {
    ResultItems(usize),
    Estimates(usize),
    SnapshotMb(u64),
}

impl std::fmt::Display for LimitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ResultItems(cap) => write!(f, "{cap} items (limits.max_result_items)"),
            Self::Estimates(n) => write!(f, "{n} estimates, one per item asked about"),
            Self::SnapshotMb(mb) => write!(f, "a {mb} MiB snapshot (limits.max_snapshot_mb)"),
        }
    }
}

impl AnswerLimit {
    const SMALL: Self = Self {
        bytes: CALL_FUEL,
        names: None,
    };
}

/// `text`, cut to [`MAX_ERROR_CHARS`] characters.
pub fn short_text(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}... ({} bytes in all)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// The plugin's error with its text cut to [`MAX_ERROR_CHARS`].
fn shortened(error: StrategyError) -> StrategyError {
    match error {
        StrategyError::InvalidInput(text) => StrategyError::InvalidInput(short_text(&text)),
        StrategyError::NotReady(text) => StrategyError::NotReady(short_text(&text)),
        StrategyError::Unsupported(text) => StrategyError::Unsupported(short_text(&text)),
        StrategyError::Internal(text) => StrategyError::Internal(short_text(&text)),
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
