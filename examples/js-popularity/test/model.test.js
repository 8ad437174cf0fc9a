// The algorithm's tests, in plain JavaScript: `npm test` (node's own test runner).
import assert from "node:assert/strict";
import { test } from "node:test";

import { InvalidInput, Model, parseSettings } from "../src/model.js";

const DAY = 86_400;
const like = (item, day, kind = "click", value = 1) => ({
  user: 0,
  item,
  kind,
  value,
  timestamp: BigInt(day * DAY),
});

function model(config = "{}", items = 4) {
  return new Model(parseSettings(config), items);
}

test("recent likes outrank old ones, by the half-life", () => {
  const m = model('{"half_life_days": 10}');
  // Item 0: two likes 40 days ago (2 * 2^-4 = 0.125 now); item 1: one like today.
  m.train([like(0, 0), like(0, 0), like(1, 40)]);
  const answer = m.recommend(2, []);
  assert.deepEqual(answer.map(([item]) => item), [1, 0]);
  assert.ok(Math.abs(answer[0][1] - 1) < 1e-12 && Math.abs(answer[1][1] - 0.125) < 1e-12, `${answer}`);
});

test("purchases weigh more, low ratings nothing", () => {
  const m = model('{"purchase_weight": 3, "positive_rating": 4}');
  m.train([like(0, 1), like(0, 1), like(1, 1, "purchase"), like(2, 1, "rate", 5), like(3, 1, "rate", 2)]);
  assert.deepEqual(m.recommend(4, []).map(([item]) => item), [1, 0, 2, 3]);
  assert.equal(m.recommend(4, [])[3][1], 0);
});

test("never returns excluded items or more than asked; ties by the lower index", () => {
  const m = model();
  m.train([like(3, 1), like(2, 1)]);
  assert.deepEqual(m.recommend(3, [2]).map(([item]) => item), [3, 0, 1]);
  assert.equal(m.recommend(2, []).length, 2);
});

test("update learns on top of train, and decades of data stay finite", () => {
  const m = model('{"half_life_days": 1}');
  m.train([like(0, 0)]);
  // 20,000 half-lives later: the anchor must move, or 2^20000 would overflow.
  m.update([like(1, 20_000), like(1, 20_000)]);
  const answer = m.recommend(2, []);
  assert.deepEqual(answer.map(([item]) => item), [1, 0]);
  assert.ok(answer.every(([, score]) => Number.isFinite(score)));
  assert.equal(answer[0][1], 2);
});

test("refuses items outside the catalog and learns nothing", () => {
  const m = model();
  m.train([like(0, 1)]);
  const before = m.save();
  assert.throws(() => m.update([like(1, 2), like(99, 2)]), InvalidInput);
  assert.deepEqual(m.save(), before);
});

test("a loaded snapshot answers identically and keeps learning alike", () => {
  const m = model();
  m.train([like(0, 1), like(1, 5), like(1, 6)]);
  const restored = model();
  restored.load(m.save());
  assert.deepEqual(restored.recommend(4, []), m.recommend(4, []));
  m.update([like(2, 9)]);
  restored.update([like(2, 9)]);
  assert.deepEqual(restored.save(), m.save());
  const empty = model();
  const fresh = model();
  fresh.load(empty.save());
  assert.deepEqual(fresh.recommend(4, []), empty.recommend(4, []));
  assert.throws(() => model().load(new TextEncoder().encode("something else")), InvalidInput);
  assert.throws(() => model("{}", 5).load(m.save()), InvalidInput);
});

test("settings refuse unknown keys and values out of range", () => {
  assert.deepEqual(parseSettings("{}"), { positiveRating: 3.5, halfLifeDays: 30, purchaseWeight: 3 });
  assert.equal(parseSettings('{"half_life_days": 7}').halfLifeDays, 7);
  assert.throws(() => parseSettings('{"half_life": 7}'), /half_life/);
  assert.throws(() => parseSettings('{"half_life_days": 0}'), InvalidInput);
  assert.throws(() => parseSettings('{"half_life_days": "7"}'), InvalidInput);
});
