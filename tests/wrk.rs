//! Running wrk with a Lua script and reading its figures back as JSON (shared by the load
//! test binaries).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// How long each wrk run lasts.
pub const DURATION: &str = "10s";
/// Demo data: users "1".."2000", items "1".."1200" (the scripts see them as `USERS`, `ITEMS`).
pub const USERS: u32 = 2_000;
pub const ITEMS: u32 = 1_200;

/// `POST /recommend` for random demo users, 10 items, default model.
pub const RECOMMEND_LUA: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local body = string.format('{"user_id":%d,"n_recommendations":10}', math.random(1, USERS))
  return wrk.format(nil, "/recommend", nil, body)
end
"#;

/// `POST /events`, one random demo event per request.
pub const EVENTS_LUA: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local kinds = {"click", "view", "purchase"}
request = function()
  local body = string.format('{"user_id":%d,"item_id":%d,"event_type":"%s"}',
    math.random(1, USERS), math.random(1, ITEMS), kinds[math.random(1, 3)])
  return wrk.format(nil, "/events", nil, body)
end
"#;

/// `POST /events/batch`, 1,000 random demo events per request.
pub const BATCH_LUA: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {}
for b = 1, 16 do
  local events = {}
  for i = 1, 1000 do
    events[i] = string.format('{"user_id":%d,"item_id":%d,"event_type":"view"}',
      math.random(1, USERS), math.random(1, ITEMS))
  end
  bodies[b] = '{"events":[' .. table.concat(events, ",") .. ']}'
end
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/events/batch", nil, bodies[(n % 16) + 1])
end
"#;

/// Prepend to a script to count responses by status (200, 503, and 503s carrying
/// `Retry-After`) into the report. Costs wrk some speed, so only scripts that need it do.
pub const COUNT_STATUSES_LUA: &str = r#"
threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; shed = 0; shed_retry_after = 0; other = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 503 then
    shed = shed + 1
    if headers["retry-after"] or headers["Retry-After"] then shed_retry_after = shed_retry_after + 1 end
  else other = other + 1 end
end
"#;

/// Appended to every script: one JSON line with the figures.
const REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  local ok, shed, retry, other = -1, -1, -1, -1
  if threads then
    ok, shed, retry, other = 0, 0, 0, 0
    for _, t in ipairs(threads) do
      ok = ok + t:get("ok"); shed = shed + t:get("shed")
      retry = retry + t:get("shed_retry_after"); other = other + t:get("other")
    end
  end
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"status_200":%d,"status_503":%d,"status_503_retry_after":%d,"status_other":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    ok, shed, retry, other))
end
"#;

pub fn wrk(base: &str, script: &str, connections: u32, dir: &Path) -> Value {
    let path = dir.join("script.lua");
    let header = format!("local USERS = {USERS}\nlocal ITEMS = {ITEMS}\n");
    std::fs::write(&path, format!("{header}{script}{REPORT_LUA}")).unwrap();
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{DURATION}")])
        .arg("-s")
        .arg(&path)
        .arg(base)
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .unwrap_or_else(|| panic!("no report from wrk: {stdout}"));
    let mut report: Value = serde_json::from_str(line).unwrap();
    let seconds = report["duration_us"].as_f64().unwrap() / 1e6;
    report["requests_per_second"] = json!(report["requests"].as_f64().unwrap() / seconds);
    report
}
