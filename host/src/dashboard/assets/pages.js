// The dashboard's pages. Each page is `{id, title, live, render(ctx)}`: `render` reads the
// JSON API through `ctx.api` and returns the page's DOM (built with `ctx.h`, which only ever
// sets text, never HTML); `live` pages are rendered again every few seconds.

import { barChart, formatNumber, intervalChart, lineChart } from './charts.js';

// ---------------------------------------------------------------------------------------
// Formatting

const percent = (v) => (v === null || v === undefined ? '–' : (v * 100).toFixed(1) + '%');
const millis = (v) => (v === null || v === undefined ? '–' : formatNumber(v) + ' ms');
const micros = (v) => (v === null || v === undefined ? '–' : v >= 1000 ? formatNumber(v / 1000) + ' ms' : v + ' µs');
const dateTime = (ms) => (ms ? new Date(ms).toLocaleString() : '–');

function duration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

function card(h, label, value, detail) {
  return h('div', { class: 'card' }, h('div', { class: 'card-label' }, label),
    h('div', { class: 'card-value' }, value), detail ? h('div', { class: 'card-detail' }, detail) : null);
}

function badge(h, text, kind) {
  return h('span', { class: `badge ${kind}` }, text);
}

function table(h, headings, rows, attributes = {}) {
  return h('table', attributes,
    h('thead', {}, h('tr', {}, headings.map((heading) =>
      h('th', { class: heading.startsWith('#') ? 'num' : null }, heading.replace(/^#/, ''))))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((cell, i) =>
      h('td', { class: headings[i].startsWith('#') ? 'num' : null }, cell))))));
}

function section(h, id, title, ...children) {
  return h('section', { class: 'page', id }, h('h2', {}, title), ...children);
}

// ---------------------------------------------------------------------------------------
// Overview

async function overview({ api, h }) {
  const o = await api('/overview');
  const recent = o.recent || {};
  const points = (field) => o.series.map((s) => [s.at_ms, s[field]]);
  const waiting = 'Collecting: figures appear a few seconds after the server starts.';
  return section(h, 'overview-page', 'Overview',
    h('div', { class: 'cards' },
      card(h, 'Events stored', formatNumber(o.events), 'feedback kept in SQLite'),
      card(h, 'Users', formatNumber(o.users)),
      card(h, 'Items', formatNumber(o.items)),
      card(h, 'Requests / s', formatNumber(recent.requests_per_second), `last ${formatNumber(recent.seconds || 0, 0)} s, all routes`),
      card(h, 'Recommendations / s', formatNumber(recent.recommendations_per_second), 'POST /recommend'),
      card(h, 'Latency p50 / p99', `${millis(recent.recommend_p50_ms)} / ${millis(recent.recommend_p99_ms)}`, 'POST /recommend, last minute'),
      card(h, 'Cache hit rate', percent(recent.cache_hit_rate), `${percent(o.cache.hit_rate)} since start (${o.cache.backend})`),
      card(h, 'Plugins ready', `${o.plugins_ready} / ${o.plugins}`, o.plugins_ready < o.plugins ? 'see Plugins' : 'all serving'),
      card(h, 'Experiments running', String(o.experiments_running)),
      card(h, 'Uptime', duration(o.uptime_seconds), `recohost ${o.version}`)),
    h('div', { class: 'charts' },
      lineChart({
        name: 'traffic', title: 'Traffic', yLabel: 'requests per second', unit: '/s',
        series: [
          { name: 'all requests', points: points('requests_per_second') },
          { name: 'recommendations', points: points('recommendations_per_second') },
          { name: 'events stored', points: points('events_per_second') },
        ],
        empty: waiting,
      }),
      lineChart({
        name: 'latency', title: 'POST /recommend latency', yLabel: 'milliseconds', unit: ' ms',
        series: [
          { name: 'p50', points: points('recommend_p50_ms') },
          { name: 'p99', points: points('recommend_p99_ms'), dashed: true },
        ],
        empty: 'No recommendations in the last 30 minutes. Ask for some (POST /recommend, or the Explorer page).',
      }),
      lineChart({
        name: 'cache', title: 'Cache hit rate', yLabel: 'hits / lookups', unit: '%', yMax: 100,
        series: [{ name: 'hit rate', points: o.series.map((s) => [s.at_ms, s.cache_hit_rate === null ? null : s.cache_hit_rate * 100]) }],
        empty: 'No cache lookups in the last 30 minutes: the cache is used by POST /recommend.',
      })),
    h('p', { class: 'note' }, `Sampled every ${o.sample_every_ms / 1000} s, last 30 minutes. Percentiles are estimated from the histogram buckets of /metrics.`));
}

// ---------------------------------------------------------------------------------------
// Plugins

function healthCell(h, plugin) {
  const kind = { ready: 'ok', unhealthy: 'bad', not_trained: 'warn' }[plugin.status] || 'warn';
  const health = plugin.health;
  const detail = [];
  if (health.consecutive_failures) detail.push(`${health.consecutive_failures} failures in a row`);
  if (health.retry_in_ms) detail.push(`next try in ${(health.retry_in_ms / 1000).toFixed(1)} s`);
  if (health.times_unhealthy) detail.push(`unhealthy ${health.times_unhealthy}× since start`);
  return h('div', {}, badge(h, plugin.status.replace('_', ' '), kind),
    detail.length ? h('div', { class: 'small' }, detail.join(', ')) : null,
    health.last_error ? h('div', { class: 'small error-text', title: health.last_error }, health.last_error.slice(0, 120)) : null);
}

async function plugins({ api, h }) {
  const data = await api('/plugins');
  const list = data.plugins;
  if (list.length === 0) {
    return section(h, 'plugins-page', 'Plugins', h('p', { class: 'empty' },
      'No plugins are loaded. Declare one under [[plugins]] in the config file (name and path of its .wasm); the server loads it without a restart.'));
  }
  const rows = list.map((p) => [
    h('div', {}, h('strong', {}, p.name), p.name === data.default_model ? badge(h, 'default', 'info') : null,
      h('div', { class: 'small' }, p.description)),
    p.version, p.wit_version,
    p.model_version === null ? '–' : h('div', {}, `v${p.model_version}`, h('div', { class: 'small' }, dateTime(p.model_created_at * 1000))),
    healthCell(h, p),
    formatNumber(p.calls), formatNumber(p.failures), formatNumber(p.traps), formatNumber(p.skipped), formatNumber(p.fallbacks),
    micros(p.p50_recommend_us), micros(p.p99_recommend_us), micros(p.calls ? p.mean_recommend_us : null),
  ]);
  const called = list.filter((p) => p.calls > 0);
  const reload = data.reload;
  return section(h, 'plugins-page', 'Plugins',
    table(h, ['Plugin', 'Version', 'WIT', 'Model', 'Health', '#Calls', '#Failures', '#Traps', '#Skipped', '#Fallbacks', '#p50', '#p99', '#Mean'], rows, { class: 'plugins' }),
    h('div', { class: 'charts' },
      barChart({
        name: 'plugin-latency', title: 'recommend call latency by plugin (since start)', yLabel: 'milliseconds', unit: ' ms',
        xLabel: 'plugin', categories: called.map((p) => p.name),
        series: [
          { name: 'p50', values: called.map((p) => p.p50_recommend_us / 1000) },
          { name: 'p99', values: called.map((p) => p.p99_recommend_us / 1000) },
        ],
        empty: 'No plugin has been called yet. Ask for recommendations (POST /recommend or the Explorer page).',
      }),
      barChart({
        name: 'plugin-calls', title: 'Calls and failures by plugin (since start)', yLabel: 'calls', xLabel: 'plugin',
        categories: list.map((p) => p.name),
        series: [
          { name: 'calls', values: list.map((p) => p.calls) },
          { name: 'failures', values: list.map((p) => p.failures), color: '#dc2626' },
          { name: 'fallbacks', values: list.map((p) => p.fallbacks), color: '#d97706' },
        ],
        empty: 'No plugin has been called yet.',
      })),
    h('h3', {}, 'Limits'),
    table(h, ['Plugin', '#Memory', '#recommend', '#update', '#train', '#Serving instances', '#Max result items', '#Failures before unhealthy', '#Backoff'],
      list.map((p) => [p.name, `${p.limits.memory_mb} MB`, `${p.limits.recommend_ms} ms`, `${p.limits.update_ms / 1000} s`,
        `${p.limits.train_ms / 1000} s`, p.limits.serving_instances || 'auto', formatNumber(p.limits.max_result_items),
        p.limits.failures_before_unhealthy, `${p.limits.backoff_ms / 1000}–${p.limits.max_backoff_ms / 1000} s`])),
    h('p', { class: 'note' }, `Plugin reloads since start: ${reload.reloads}.`,
      reload.error ? h('span', { class: 'error-text' }, ` The last reload was refused: ${reload.error.message}`) : null));
}

// ---------------------------------------------------------------------------------------
// Online learning

// The outcome of the last press of the update button, kept across refreshes.
let updateMessage = null;

async function triggerUpdate(api) {
  try {
    const answer = await api('/learning/trigger-update', { method: 'POST', operator: true });
    updateMessage = answer.status === 'nothing_to_learn'
      ? { kind: 'ok', text: 'Nothing to learn: every stored event is already in the models.' }
      : { kind: 'ok', text: `Update ${answer.update_id} ${answer.status === 'scheduled' ? 'scheduled' : 'already scheduled'}; it appears below when done.` };
  } catch (error) {
    const hint = error.status === 401
      ? ' Enter the operator token (admin_token in the config, or RECOHOST_ADMIN_TOKEN) in the box at the top right.'
      : '';
    updateMessage = { kind: 'error', text: `Refused (${error.status || 'no answer'} ${error.code}): ${error.message}.${hint}` };
  }
  window.dispatchEvent(new Event('recohost:refresh'));
}

async function learning({ api, h }) {
  const [stats, history] = await Promise.all([api('/learning/stats'), api('/learning/history?limit=50')]);
  const t = stats.triggers;
  const runs = history.updates.slice().reverse();
  const job = stats.running ? `running ${stats.running.kind} ${stats.running.update_id ?? ''}` : stats.pending ? 'waiting to run' : 'idle';
  const pluginNames = [...new Set(runs.flatMap((r) => Object.keys(r.outcomes)))].sort();
  const button = h('button', { id: 'trigger-update', type: 'button', onclick: () => triggerUpdate(api) }, 'Update models now');
  return section(h, 'learning-page', 'Online learning',
    h('div', { class: 'cards' },
      card(h, 'Buffer', formatNumber(stats.buffer_size), `update at ${formatNumber(t.update_buffer_size)} events`),
      card(h, 'Not yet learned', formatNumber(stats.unlearned_events), 'events some model has not learned'),
      card(h, 'Events learned', formatNumber(stats.total_processed), `of ${formatNumber(stats.total_events_stored)} stored`),
      card(h, 'Updates', formatNumber(stats.update_count), 'since start'),
      card(h, 'Job', job),
      card(h, 'Triggers', `${formatNumber(t.update_buffer_size)} events or ${t.update_interval_secs} s`,
        t.retrain_interval_secs ? `retrain every ${duration(t.retrain_interval_secs)}` : 'no scheduled retrain')),
    h('div', { class: 'actions' }, button,
      h('span', { class: 'small' }, 'Learns the waiting events now. Operator action: needs the token when the server has one.'),
      updateMessage ? h('p', { id: 'update-message', class: `message ${updateMessage.kind}` }, updateMessage.text) : null),
    h('div', { class: 'charts' },
      lineChart({
        name: 'update-duration', title: 'Update duration', yLabel: 'milliseconds', unit: ' ms', xLabel: 'update start (local time)',
        series: [{ name: 'whole update', points: runs.map((r) => [r.started_at_ms, r.duration_ms]) },
          ...pluginNames.map((name) => ({ name, dashed: true, points: runs.map((r) => [r.started_at_ms, r.outcomes[name] ? r.outcomes[name].duration_ms : null]) }))],
        empty: 'No update yet. Updates run after enough new events, on the interval, or with the button above.',
      }),
      barChart({
        name: 'feedback-per-update', title: 'Feedback per update', yLabel: 'events learned', xLabel: 'update',
        categories: runs.map((r) => `#${r.update_id}`),
        series: [{ name: 'events', values: runs.map((r) => r.feedback_count) }],
        empty: 'No update yet. Send events (POST /events), then wait for the trigger or press the button.',
      })),
    h('h3', {}, 'Models'),
    table(h, ['Plugin', '#Model version', '#Learned through event', 'Created'],
      Object.entries(stats.models).map(([name, m]) => [name, m.model_version ?? '–', formatNumber(m.through_event), dateTime(m.created_at * 1000)])),
    h('h3', {}, 'Last updates'),
    runs.length === 0 ? h('p', { class: 'empty' }, 'No updates or retrains yet.')
      : table(h, ['#Update', 'Kind', 'Trigger', 'Started', '#Duration', '#Events', '#Models updated', 'Outcome'],
        runs.slice(-10).reverse().map((r) => [r.update_id, r.kind, r.trigger, dateTime(r.started_at_ms), millis(r.duration_ms),
          formatNumber(r.feedback_count), r.models_updated,
          Object.entries(r.outcomes).filter(([, o]) => o.status !== 'updated').map(([name, o]) => `${name}: ${o.status}${o.error ? ' (' + o.error + ')' : ''}`).join('; ') || 'all updated'])));
}

// ---------------------------------------------------------------------------------------
// Experiments

function estimate(e) {
  return e ? `${formatNumber(e.value, 3)} [${formatNumber(e.ci_low, 3)}, ${formatNumber(e.ci_high, 3)}]` : '–';
}

function srmLine(h, srm) {
  if (!srm) return h('p', { class: 'srm' }, badge(h, 'SRM: not computed', 'info'), ' until users are exposed in more than one group.');
  return h('p', { class: 'srm' }, badge(h, srm.flagged ? 'SRM: mismatch' : 'SRM: ok', srm.flagged ? 'bad' : 'ok'),
    ` users per group against the weights in force when they were placed: chi² ${formatNumber(srm.chi_square, 2)}, p = ${srm.p_value.toPrecision(3)} `,
    srm.flagged ? `(below ${srm.threshold}: assignment or logging is broken, do not trust these results)` : `(flagged below ${srm.threshold})`);
}

// A bandit's weights: who leads and how surely, the weights over time, each arm's posterior
// and the revisions operators made.
function banditSection(h, experiment, detail) {
  const bandit = detail.bandit;
  const settings = experiment.allocation;
  const history = bandit.history || [];
  const leader = bandit.leader
    ? `${bandit.leader.group} leads: ${percent(bandit.leader.probability)} chance of being the best if the arms differ; ${percent(bandit.equal_probability)} chance that they are equal.`
    : `Burning in: the weights stay equal until every arm has ${formatNumber(settings.burn_in_users)} users.`;
  const state = bandit.state === 'learning'
    ? `learning, next update ${dateTime(bandit.next_update_at_ms)}`
    : bandit.state;
  const operatorActions = history.filter((r) => !['start', 'update'].includes(r.action)).slice(-10);
  return h('div', { class: 'bandit' },
    h('p', { class: 'leader' }, badge(h, 'Thompson bandit', 'info'), ' ', leader),
    h('p', { class: 'small' }, `metric ${settings.metric.kind}${settings.metric.threshold ? ' ≥ ' + settings.metric.threshold : ''} · every ${formatNumber(settings.period_secs)} s · floor ${percent(settings.min_weight)} · null prior ${settings.null_prior} · weights revision ${bandit.revision}`,
      bandit.action ? ` (${bandit.action}, ${dateTime(bandit.at_ms)})` : '', ` · ${state}`),
    h('div', { class: 'charts' },
      lineChart({
        name: 'bandit-weights', title: 'Share of new users per group, by weights revision', yLabel: 'share of new users', unit: '%', yMax: 100,
        // By name: revisions from before a change of groups have other groups.
        series: experiment.groups.map((g) => ({ name: g.name, points: history.filter((r) => r.groups.includes(g.name)).map((r) => [r.at_ms, r.weights[r.groups.indexOf(g.name)] * 100]) })),
        empty: 'No weights revision yet: the learner stores the first within a second of the experiment starting.',
      }),
      intervalChart({
        name: 'bandit-posterior', title: 'Success rate per group: posterior mean, 95% credible interval', xLabel: `trials followed by ${settings.metric.kind}`, unit: '%',
        rows: bandit.arms.map((a) => ({ label: a.group, value: a.posterior_mean * 100, low: a.posterior_low * 100, high: a.posterior_high * 100, note: `${a.successes} of ${a.trials} trials, P(best) ${percent(a.best_probability)}` })),
        empty: 'No trials yet.',
      })),
    operatorActions.length
      ? table(h, ['#Revision', 'When', 'Action', 'By', 'Note'], operatorActions.map((r) => [r.revision, dateTime(r.at_ms), r.action, r.by, r.note || '']), { class: 'bandit-actions' })
      : null);
}

function experimentCard(h, experiment, results, detail) {
  const status = experiment.status;
  const groups = results.groups;
  return h('article', { class: 'experiment', dataset: { experiment: experiment.id } },
    h('h3', {}, experiment.name, ' ', badge(h, status, status === 'running' ? 'ok' : 'warn')),
    h('p', { class: 'small' }, `${experiment.id} · ${experiment.file} · coverage ${percent(experiment.coverage)}`,
      experiment.namespace ? ` · namespace ${experiment.namespace.name} [${experiment.namespace.range.join(', ')})` : ''),
    experiment.description ? h('p', {}, experiment.description) : null,
    detail && detail.bandit ? banditSection(h, experiment, detail) : null,
    srmLine(h, results.srm),
    table(h, ['Group', 'Plugin', '#Weight', '#Users', '#Exposures', '#Clicks', 'CTR [95% CI]', '#Ratings', 'Mean rating [95% CI]'],
      groups.map((g) => [g.group, g.plugin || '(removed)', g.weight === null ? '–' : percent(g.weight), formatNumber(g.users),
        formatNumber(g.exposures), formatNumber(g.clicked_exposures), estimate(g.ctr), formatNumber(g.ratings), estimate(g.mean_rating)])),
    h('div', { class: 'charts' },
      barChart({
        name: 'exposures', title: 'Users and exposures per group', yLabel: 'count', xLabel: 'group',
        categories: groups.map((g) => g.group),
        series: [{ name: 'users', values: groups.map((g) => g.users) }, { name: 'exposures', values: groups.map((g) => g.exposures) }],
        empty: 'No exposures yet: users enter the experiment when they ask for recommendations.',
      }),
      intervalChart({
        name: 'ctr', title: 'Click-through rate per group, 95% Wilson interval', xLabel: 'exposures followed by a click', unit: '%',
        rows: groups.map((g) => ({ label: g.group, value: g.ctr ? g.ctr.value * 100 : null, low: g.ctr ? g.ctr.ci_low * 100 : null, high: g.ctr ? g.ctr.ci_high * 100 : null, note: g.ctr ? `${g.clicked_exposures} of ${g.exposures} exposures` : 'no exposures yet' })),
        empty: 'No exposures yet: CTR needs users who were shown recommendations and then clicked (POST /events).',
      }),
      intervalChart({
        name: 'mean-rating', title: 'Mean rating after exposure per group, 95% Student-t interval', xLabel: 'rating',
        rows: groups.map((g) => ({ label: g.group, value: g.mean_rating ? g.mean_rating.value : null, low: g.mean_rating ? g.mean_rating.ci_low : null, high: g.mean_rating ? g.mean_rating.ci_high : null, note: g.mean_rating ? `${g.ratings} ratings` : 'no ratings yet' })),
        format: (v) => formatNumber(v, 2),
        empty: 'No ratings after exposure yet (POST /events with event_type "rate").',
      })));
}

async function experiments({ api, h }) {
  const list = await api('/experiments');
  const reloadError = list.reload.error
    ? h('p', { class: 'message error' }, `The last change to the experiment files was refused, the previous set stays in force: ${list.reload.error.message}`)
    : null;
  if (list.experiments.length === 0) {
    return section(h, 'experiments-page', 'Experiments', reloadError, h('p', { class: 'empty' },
      list.directory
        ? `No experiments yet. Put a TOML file in ${list.directory} (see docs/operations.md, or experiments/model_comparison.toml in the source); the server picks it up within a second.`
        : 'No experiments directory is configured. Set experiments_dir in the config file, then put experiment TOML files in it.'));
  }
  const results = await Promise.all(list.experiments.map((e) => api(`/experiments/${encodeURIComponent(e.id)}/results`)));
  // A bandit's page needs its weights history.
  const details = await Promise.all(list.experiments.map((e) => (e.bandit ? api(`/experiments/${encodeURIComponent(e.id)}?history=500`) : null)));
  return section(h, 'experiments-page', 'Experiments', reloadError,
    h('p', { class: 'note' }, `${list.experiments.length} experiment(s) from ${list.directory}; exposures stored ${formatNumber(list.exposures_logged.stored)}`,
      list.exposures_logged.failed ? `, failed ${formatNumber(list.exposures_logged.failed)}` : '',
      list.exposures_logged.dropped ? `, dropped (queue full) ${formatNumber(list.exposures_logged.dropped)}` : ''),
    list.experiments.map((e, i) => experimentCard(h, e, results[i], details[i])));
}

// ---------------------------------------------------------------------------------------
// Monitoring

function levelBadge(h, level) {
  return badge(h, level, { ok: 'ok', warning: 'warn', alert: 'bad' }[level] || 'info');
}

function alertRows(h, alerts) {
  return alerts.map((a) => [a.alert, badge(h, a.severity, a.severity === 'critical' ? 'bad' : 'warn'),
    dateTime(a.raised_at_ms), a.resolved_at_ms ? dateTime(a.resolved_at_ms) : 'open',
    h('div', {}, a.summary, h('div', { class: 'small' }, JSON.stringify(a.evidence)))]);
}

async function monitoring({ api, h }) {
  const [data, alerts] = await Promise.all([api('/monitoring?limit=288'), api('/alerts?hours=24')]);
  if (!data.enabled) {
    return section(h, 'monitoring-page', 'Monitoring', h('p', { class: 'empty' },
      'Model monitoring is off ([monitoring] enabled = false in the config file).'));
  }
  const windows = data.windows;
  // Per plugin and window, the hit rate over every version's judged lists.
  const plugins = [...new Set(windows.flatMap((w) => w.quality.map((q) => q.plugin)))].sort();
  const hitRate = (w, plugin) => {
    const judged = w.quality.filter((q) => q.plugin === plugin && q.lists_judged > 0);
    const lists = judged.reduce((n, q) => n + q.lists_judged, 0);
    return lists ? (judged.reduce((n, q) => n + q.hit_rate * q.lists_judged, 0) / lists) * 100 : null;
  };
  const drifts = windows.filter((w) => w.drift);
  const features = [...new Set(drifts.flatMap((w) => w.drift.features.map((f) => f.name)))];
  const psiOf = (w, name) => {
    const f = w.drift.features.find((x) => x.name === name);
    return f && f.psi !== null ? f.psi : null;
  };
  const latest = windows.length ? windows[windows.length - 1] : null;
  const latestDrift = drifts.length ? drifts[drifts.length - 1].drift : null;
  const threshold = (value, label) => ({ name: label, dashed: true, color: '#9ca3af', points: drifts.map((w) => [w.ended_at_ms, value]) });
  // The newest window that served lists (a quiet minute shows the last figures).
  const withLists = windows.slice().reverse().find((w) => w.quality.length > 0);
  const versions = withLists ? withLists.quality : [];
  return section(h, 'monitoring-page', 'Monitoring',
    h('div', { class: 'cards' },
      card(h, 'Open alerts', String(alerts.open.length), alerts.open.length ? alerts.open.map((a) => a.alert).join(', ') : 'none'),
      card(h, 'Resolved (24 h)', String(alerts.recent.length)),
      card(h, 'Windows', formatNumber(windows.length), latest ? `newest ended ${dateTime(latest.ended_at_ms)}` : 'the first closes after window_secs'),
      card(h, 'Lists awaiting users', formatNumber(data.lists_open), 'judged by the user\'s next event'),
      card(h, 'Thresholds', `PSI ${data.psi_warn} / ${data.psi_alert}`, `quality test α = ${data.quality_alpha}`)),
    h('h3', {}, 'Alerts'),
    alerts.open.length + alerts.recent.length === 0
      ? h('p', { class: 'empty' }, 'No alert in the last 24 hours.')
      : table(h, ['Alert', 'Severity', 'Raised', 'Resolved', 'Summary and evidence'], alertRows(h, [...alerts.open, ...alerts.recent]), { class: 'alerts' }),
    h('div', { class: 'charts' },
      lineChart({
        name: 'hit-rate', title: 'Hit rate per plugin (lists judged by the user\'s next event)', yLabel: 'lists hit', unit: '%',
        series: plugins.map((plugin) => ({ name: plugin, points: windows.map((w) => [w.ended_at_ms, hitRate(w, plugin)]) })),
        empty: 'No list judged yet: lists are judged when their user\'s next event arrives, or after attribution_secs.',
      }),
      lineChart({
        name: 'drift-psi', title: 'Drift per feature against the training data (PSI)', yLabel: 'PSI',
        series: [...features.map((name) => ({ name, points: drifts.map((w) => [w.ended_at_ms, psiOf(w, name)]) })),
          threshold(data.psi_warn, `warning ${data.psi_warn}`), threshold(data.psi_alert, `alert ${data.psi_alert}`)],
        empty: 'No drift window yet: one closes once it holds min_window_events events.',
      })),
    h('h3', {}, withLists ? `Model versions, window ending ${dateTime(withLists.ended_at_ms)}` : 'Model versions'),
    versions.length === 0 ? h('p', { class: 'empty' }, 'No list served yet in the windows kept.')
      : table(h, ['Plugin', '#Version', '#Lists served', '#Judged', '#Hit rate', '#CTR', '#Coverage', '#Popularity pct', '#Score p50'],
        versions.map((q) => [q.plugin, q.model_version, formatNumber(q.lists_served), formatNumber(q.lists_judged), percent(q.hit_rate), percent(q.ctr),
          percent(q.coverage), q.popularity_percentile === null ? '–' : formatNumber(q.popularity_percentile, 2), q.scores ? formatNumber(q.scores.p50, 3) : '–']), { class: 'versions' }),
    h('h3', {}, 'Drift in the newest drift window'),
    latestDrift === null ? h('p', { class: 'empty' }, 'No drift window yet.')
      : table(h, ['Feature', '#PSI', '#Jensen-Shannon', 'Level'],
        [...latestDrift.features, ...latestDrift.predictions.map((p) => ({ ...p, name: `scores of ${p.name} (shown, not alerted)` }))]
          .map((f) => [f.name, f.psi === null ? '–' : formatNumber(f.psi, 3), f.jensen_shannon === null ? '–' : formatNumber(f.jensen_shannon, 3), levelBadge(h, f.level)]), { class: 'drift' }),
    h('p', { class: 'note' }, latestDrift ? `${formatNumber(latestDrift.events)} events and ${formatNumber(latestDrift.active_users)} users in the newest drift window, against a reference of ${formatNumber(latestDrift.reference_events)} events. See docs/monitoring.md for how each figure is computed.` : 'See docs/monitoring.md for how each figure is computed.'));
}

// ---------------------------------------------------------------------------------------
// Explorer

function recommendationsColumn(h, heading, subtitle, answer, mine) {
  if (answer.error) {
    return h('div', { class: 'arm' + (mine ? ' mine' : '') }, h('h4', {}, heading), h('p', { class: 'small' }, subtitle),
      h('p', { class: 'error-text' }, answer.error));
  }
  return h('div', { class: 'arm' + (mine ? ' mine' : ''), dataset: { model: answer.model } },
    h('h4', {}, heading, mine ? badge(h, "this user's group", 'ok') : null),
    h('p', { class: 'small' }, `${subtitle} · model v${answer.model_version}${answer.cold_start ? ' · cold start' : ''}${answer.fallback ? ` · fallback from ${answer.fallback.from}` : ''}`),
    h('ol', { class: 'recommendations' }, answer.recommendations.map((r) =>
      h('li', {}, h('span', { class: 'title' }, r.title || String(r.item_id)), h('span', { class: 'score' }, formatNumber(r.score, 3))))));
}

async function explore(api, h, userId) {
  const [user, list, plugins] = await Promise.all([
    api(`/users/${encodeURIComponent(userId)}?limit=20`).catch((error) => ({ error })),
    api('/experiments'),
    api('/plugins'),
  ]);
  const running = list.experiments.filter((e) => e.status === 'running');
  const memberships = await Promise.all(running.map((e) =>
    api(`/users/${encodeURIComponent(userId)}/experiment-group?experiment_id=${encodeURIComponent(e.id)}`)));
  // Arms: the groups of the first experiment the user is in, else of the first running
  // experiment, else every plugin.
  const index = Math.max(0, memberships.findIndex((m) => m.in_experiment));
  const experiment = running[index];
  const membership = memberships[index];
  const arms = experiment
    ? experiment.groups.map((g) => ({ heading: g.name, subtitle: g.plugin, model: g.plugin, mine: membership.in_experiment && membership.group_name === g.name }))
    : plugins.plugins.map((p) => ({ heading: p.name, subtitle: p.description, model: p.name, mine: false }));
  // Previews bypass the experiments: they log no exposure, so exploring never skews results.
  const answers = await Promise.all(arms.map((arm) =>
    api('/recommend', { method: 'POST', body: { user_id: userId, n_recommendations: 10, model_type: arm.model, bypass_experiments: true } })
      .catch((error) => ({ error: error.message }))));

  const history = user.error
    ? h('p', { class: 'empty' }, user.error.status === 404
      ? 'No events from this user yet: recommendations below are cold-start answers.'
      : `Cannot read the history: ${user.error.message}`)
    : user.recent_events.length === 0 ? h('p', { class: 'empty' }, 'No events yet.')
      : table(h, ['Item', 'Event', '#Value', 'When'], user.recent_events.map((e) =>
        [e.title || String(e.item_id), e.event_type, e.event_type === 'rate' ? formatNumber(e.value, 1) : '', dateTime(e.timestamp * 1000)]), { class: 'history' });
  const groups = running.length === 0
    ? h('p', { class: 'note' }, 'No experiment is running: showing every plugin.')
    : h('ul', { class: 'memberships' }, running.map((e, i) => h('li', {}, h('strong', {}, e.name), ': ',
      memberships[i].in_experiment ? `group ${memberships[i].group_name} (${memberships[i].model})` : `not in it (${memberships[i].reason})`,
      typeof memberships[i].hash === 'number' ? h('span', { class: 'small' }, ` · hash ${memberships[i].hash}`) : null)));
  return h('div', { id: 'explorer-result', dataset: { user: userId } },
    h('div', { class: 'explorer-grid' },
      h('div', {}, h('h3', {}, `History of user ${userId}`, user.error ? '' : h('span', { class: 'small' }, ` · ${formatNumber(user.event_count)} events, newest 20`)), history),
      h('div', {}, h('h3', {}, 'Experiment groups'), groups)),
    h('h3', {}, experiment ? `Each arm of “${experiment.name}” for this user` : 'Each plugin for this user'),
    h('p', { class: 'small' }, 'Previews: asked with bypass_experiments, so they log no exposure and do not count in the results.'),
    h('div', { class: 'arms' }, arms.map((arm, i) => recommendationsColumn(h, arm.heading, arm.subtitle, answers[i], arm.mine))));
}

async function explorer({ api, h, argument }) {
  const input = h('input', { id: 'explorer-user', name: 'user', placeholder: 'user ID, e.g. 123', required: true, autocomplete: 'off' });
  if (argument) input.value = argument;
  const form = h('form', {
    class: 'explorer-form',
    onsubmit: (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value) location.hash = '#explorer/' + encodeURIComponent(value);
    },
  }, h('label', { for: 'explorer-user' }, 'User '), input, h('button', { type: 'submit' }, 'Explore'));
  let result;
  if (!argument) {
    result = h('p', { class: 'empty' }, 'Type a user ID to see their recent history, their experiment group and, side by side, what each arm would recommend to them.');
  } else {
    try {
      result = await explore(api, h, argument);
    } catch (error) {
      result = h('p', { class: 'message error' }, `Cannot explore user ${argument}: ${error.message}`);
    }
  }
  return section(h, 'explorer-page', 'Explorer', form, result);
}

export const PAGES = [
  { id: 'overview', title: 'Overview', live: true, render: overview },
  { id: 'plugins', title: 'Plugins', live: true, render: plugins },
  { id: 'learning', title: 'Learning', live: true, render: learning },
  { id: 'experiments', title: 'Experiments', live: true, render: experiments },
  { id: 'monitoring', title: 'Monitoring', live: true, render: monitoring },
  { id: 'explorer', title: 'Explorer', live: false, render: explorer },
];
