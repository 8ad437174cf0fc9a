// Time-decayed popularity, in plain JavaScript: an item's score is the sum of its likes,
// each weighted by 2^(-age / half-life), so what users liked last week outranks what they
// liked last year. A like is a click, view or purchase (a purchase counts `purchase_weight`
// times), or a rating of at least `positive_rating`. Ages are measured from the newest event
// the model has seen, so the ranking does not depend on when a request comes.
//
// Online learning: `update` adds each new like at once. Scores are kept as
// sum(w * 2^((t - anchor) / half-life)) for a fixed anchor time, so a new like is one
// addition and nothing older is rescaled; when the exponents grow large the anchor moves
// forward and every score is rescaled once.
//
// Written from `wit/strategy.wit` and docs/plugins.md, starting from
// `recohost plugin new js-popularity --lang js`: this file replaces the generated model.

export const DESCRIPTION = "Time-decayed popularity in JavaScript (example plugin)";

const SNAPSHOT_MAGIC = new TextEncoder().encode("jspop001");
const SECONDS_PER_DAY = 86_400;
/** Half-lives between the anchor and the newest like before the anchor moves (2^400 is far
 * below the largest double). */
const MAX_EXPONENT = 400;

export class InvalidInput extends Error {}

const SETTINGS = {
  positive_rating: { key: "positiveRating", fallback: 3.5, valid: (v) => Number.isFinite(v) },
  half_life_days: { key: "halfLifeDays", fallback: 30, valid: (v) => Number.isFinite(v) && v > 0 },
  purchase_weight: { key: "purchaseWeight", fallback: 3, valid: (v) => Number.isFinite(v) && v >= 0 },
};

export function parseSettings(json) {
  let values;
  try {
    values = JSON.parse(json);
  } catch (error) {
    throw new InvalidInput(`invalid config: ${error.message}`);
  }
  if (values === null || typeof values !== "object" || Array.isArray(values)) {
    throw new InvalidInput("invalid config: expected a JSON object");
  }
  const settings = {};
  for (const [name, { key, fallback }] of Object.entries(SETTINGS)) settings[key] = fallback;
  for (const [name, value] of Object.entries(values)) {
    const setting = SETTINGS[name];
    if (!setting) {
      throw new InvalidInput(
        `invalid config: unknown key "${name}", expected one of ${Object.keys(SETTINGS).join(", ")}`,
      );
    }
    if (typeof value !== "number" || !setting.valid(value)) {
      throw new InvalidInput(`invalid config: ${name} must be a number in range, not ${JSON.stringify(value)}`);
    }
    settings[setting.key] = value;
  }
  return settings;
}

export class Model {
  constructor(settings, catalogLength) {
    this.settings = settings;
    this.halfLife = settings.halfLifeDays * SECONDS_PER_DAY;
    /** sum(weight * 2^((t - anchor) / halfLife)) per item. */
    this.scores = new Float64Array(catalogLength);
    /** Seconds; null until the first like. */
    this.anchor = null;
    /** The newest event's time, in seconds. */
    this.newest = 0;
  }

  weight(event) {
    switch (event.kind) {
      case "rate":
        return event.value >= this.settings.positiveRating ? 1 : 0;
      case "purchase":
        return this.settings.purchaseWeight;
      default:
        return 1;
    }
  }

  train(events) {
    this.scores.fill(0);
    this.anchor = null;
    this.newest = 0;
    return this.update(events);
  }

  /** Adds the new likes; refuses (and learns nothing from) a batch with an unknown item. */
  update(events) {
    for (const event of events) {
      if (!(event.item >= 0 && event.item < this.scores.length)) {
        throw new InvalidInput(`item index ${event.item} is outside the catalog of ${this.scores.length} items`);
      }
    }
    for (const event of events) {
      const weight = this.weight(event);
      const time = Number(event.timestamp);
      this.newest = Math.max(this.newest, time);
      if (weight === 0) continue;
      if (this.anchor === null) this.anchor = time;
      let exponent = (time - this.anchor) / this.halfLife;
      if (exponent > MAX_EXPONENT) {
        this.moveAnchor(time);
        exponent = 0;
      }
      this.scores[event.item] += weight * 2 ** exponent;
    }
    return events.length;
  }

  /** Rescales every score to a new anchor time (scores keep their order and ratios). */
  moveAnchor(time) {
    const factor = 2 ** ((this.anchor - time) / this.halfLife);
    for (let item = 0; item < this.scores.length; item++) this.scores[item] *= factor;
    this.anchor = time;
  }

  /** Up to `count` [item, score] pairs, best first (ties by the lower index), none of
   * `exclude`; scores are likes decayed to the newest event's time. */
  recommend(count, exclude) {
    const excluded = new Set(exclude);
    // Keep the best `count` in a small sorted list: one pass, no sort of the catalog.
    const best = [];
    const better = (a, b) => this.scores[a] > this.scores[b] || (this.scores[a] === this.scores[b] && a < b);
    for (let item = 0; item < this.scores.length; item++) {
      if (excluded.has(item)) continue;
      if (best.length === count && !better(item, best[best.length - 1])) continue;
      let at = best.length === count ? best.length - 1 : best.length;
      while (at > 0 && better(item, best[at - 1])) {
        best[at] = best[at - 1];
        at--;
      }
      best[at] = item;
    }
    const toNewest = this.anchor === null ? 1 : 2 ** ((this.anchor - this.newest) / this.halfLife);
    return best.map((item) => [item, this.scores[item] * toNewest]);
  }

  /** The magic, the anchor and newest times (f64, NaN for no anchor), then each item's score
   * (little-endian f64). */
  save() {
    const bytes = new Uint8Array(SNAPSHOT_MAGIC.length + 16 + 8 * this.scores.length);
    bytes.set(SNAPSHOT_MAGIC);
    const view = new DataView(bytes.buffer);
    let at = SNAPSHOT_MAGIC.length;
    view.setFloat64(at, this.anchor === null ? NaN : this.anchor, true);
    view.setFloat64(at + 8, this.newest, true);
    at += 16;
    for (const score of this.scores) {
      view.setFloat64(at, score, true);
      at += 8;
    }
    return bytes;
  }

  load(snapshot) {
    const magic = snapshot.subarray(0, SNAPSHOT_MAGIC.length);
    if (magic.length !== SNAPSHOT_MAGIC.length || magic.some((byte, i) => byte !== SNAPSHOT_MAGIC[i])) {
      throw new InvalidInput("not a snapshot of js-popularity");
    }
    const expected = SNAPSHOT_MAGIC.length + 16 + 8 * this.scores.length;
    if (snapshot.length !== expected) {
      throw new InvalidInput(
        `the snapshot holds ${Math.floor((snapshot.length - SNAPSHOT_MAGIC.length - 16) / 8)} items, the catalog ${this.scores.length}`,
      );
    }
    const view = new DataView(snapshot.buffer, snapshot.byteOffset, snapshot.length);
    let at = SNAPSHOT_MAGIC.length;
    const anchor = view.getFloat64(at, true);
    const newest = view.getFloat64(at + 8, true);
    const scores = new Float64Array(this.scores.length);
    for (let item = 0; item < scores.length; item++) {
      scores[item] = view.getFloat64(at + 16 + 8 * item, true);
      if (!Number.isFinite(scores[item])) throw new InvalidInput(`the snapshot's score of item ${item} is not finite`);
    }
    this.anchor = Number.isNaN(anchor) ? null : anchor;
    this.newest = newest;
    this.scores = scores;
  }
}
