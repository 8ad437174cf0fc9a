//! The one model an instance holds, between calls.

use std::cell::RefCell;

use crate::{Item, Strategy, StrategyError};

/// Holds the model of a WebAssembly instance. WebAssembly instances are single-threaded and
/// the host never re-enters one, so a `RefCell` in a thread-local is all the locking needed.
pub struct InstanceState<S> {
    model: RefCell<Option<S>>,
}

impl<S: Strategy> InstanceState<S> {
    pub const fn new() -> Self {
        Self {
            model: RefCell::new(None),
        }
    }

    pub fn configure(&self, config_json: &str, catalog: Vec<Item>) -> Result<(), StrategyError> {
        let mut model = self.model.borrow_mut();
        if model.is_some() {
            return Err(StrategyError::InvalidInput(
                "configure was already called on this instance".into(),
            ));
        }
        *model = Some(S::configure(config_json, catalog)?);
        Ok(())
    }

    pub fn with_model<T>(
        &self,
        call: impl FnOnce(&S) -> Result<T, StrategyError>,
    ) -> Result<T, StrategyError> {
        match self.model.borrow().as_ref() {
            Some(model) => call(model),
            None => Err(not_configured()),
        }
    }

    pub fn with_model_mut<T>(
        &self,
        call: impl FnOnce(&mut S) -> Result<T, StrategyError>,
    ) -> Result<T, StrategyError> {
        match self.model.borrow_mut().as_mut() {
            Some(model) => call(model),
            None => Err(not_configured()),
        }
    }
}

impl<S: Strategy> Default for InstanceState<S> {
    fn default() -> Self {
        Self::new()
    }
}

fn not_configured() -> StrategyError {
    StrategyError::NotReady("configure must be called before any other function".into())
}
