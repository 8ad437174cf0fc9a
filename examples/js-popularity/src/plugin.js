// js-popularity: a recommendation strategy for recohost, binding `model.js` to the contract.
//
// `model.js` holds the algorithm and knows nothing of WebAssembly; this module turns the
// host's calls (`wit/strategy.wit`, package `recohost:strategy@1.0.0`) into calls on it. It
// is what `componentize-js` builds into `js-popularity.wasm` (`npm run build`).
//
// A call fails with the contract's `strategy-error` by throwing an error whose `payload` is
// `{ tag, val }`; any other exception would abort the instance (the host then discards it
// and rebuilds it from the last snapshot). Every call therefore turns the model's
// `InvalidInput` into `invalid-input` and anything else into `internal`, with its stack,
// which the host logs.

import { log } from "recohost:strategy/host-log@1.0.0";

import { DESCRIPTION, InvalidInput, Model, parseSettings } from "./model.js";

/** The instance's one model; null until `configure`. */
let model = null;

function strategyError(tag, message) {
  const error = new Error(message);
  error.payload = { tag, val: message };
  return error;
}

/** Runs `body(model)`, turning every failure into the contract's `strategy-error`. */
function call(body) {
  if (model === null) throw strategyError("not-ready", "configure has not been called");
  try {
    return body(model);
  } catch (error) {
    if (error && error.payload) throw error;
    if (error instanceof InvalidInput) throw strategyError("invalid-input", error.message);
    throw strategyError("internal", String((error && error.stack) || error));
  }
}

const report = (eventsUsed) => ({ eventsUsed: BigInt(eventsUsed), message: "" });

export const plugin = {
  describe() {
    return { name: "js-popularity", version: "0.1.0", description: DESCRIPTION, predictsRatings: false };
  },

  configure(configJson, catalog) {
    let settings;
    try {
      settings = parseSettings(configJson);
    } catch (error) {
      throw strategyError("invalid-input", error.message);
    }
    log("info", `configured for ${catalog.length} items`);
    model = new Model(settings, catalog.length);
  },

  train(events) {
    return call((m) => report(m.train(events)));
  },

  update(events) {
    return call((m) => report(m.update(events)));
  },

  recommend(request) {
    return call((m) => m.recommend(request.count, request.exclude).map(([item, score]) => ({ item, score })));
  },

  predict(user, items) {
    throw strategyError("unsupported", "js-popularity ranks items; it does not predict ratings");
  },

  save() {
    return call((m) => m.save());
  },

  load(snapshot) {
    call((m) => m.load(snapshot));
  },
};
