// SVG charts for the dashboard: a time-series line chart, a grouped bar chart and an
// interval (forest) chart for estimates with confidence intervals. Every chart has a title,
// labelled axes with units, and a legend when it shows more than one series; every data mark
// has a tooltip (<title>) with its exact value. Marks carry the class `mark`, and the figure
// `data-marks`, so tests can tell a chart with data from an empty frame.
//
// Hand-written rather than a charting library: three chart types in a few hundred lines, no
// vendored dependency to keep up to date, and SVG nodes a browser test can inspect.

const SVG = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#4b5563'];

const WIDTH = 600;
const HEIGHT = 250;
const MARGIN = { top: 14, right: 24, bottom: 44, left: 80 };

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function tooltip(node, text) {
  node.appendChild(svg('title', {}, text));
  return node;
}

// Round tick values (1, 2, 5 times a power of ten) covering [low, high].
export function niceTicks(low, high, count = 5) {
  if (!(high > low)) high = low + 1;
  const raw = (high - low) / count;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  // From the step at or below `low` to the step at or above `high`, so that every value
  // lies inside the axis.
  const first = Math.floor(low / step + 1e-9);
  const last = Math.ceil(high / step - 1e-9);
  const ticks = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

export function formatNumber(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e7) return (value / 1e6).toFixed(1) + 'M';
  if (magnitude >= 100 || Number.isInteger(value)) return Math.round(value).toLocaleString('en-US');
  return value.toFixed(magnitude < 1 ? Math.max(digits, 2) : digits);
}

function clock(ms) {
  return new Date(ms).toTimeString().slice(0, 8);
}

// The frame every chart shares: a <figure> with its caption, the SVG, an optional legend,
// or, without data, a sentence saying what to do.
function figure(name, title, empty) {
  const root = document.createElement('figure');
  root.className = 'chart';
  root.dataset.chart = name;
  const caption = document.createElement('figcaption');
  caption.textContent = title;
  root.appendChild(caption);
  if (empty) {
    const note = document.createElement('p');
    note.className = 'empty';
    note.textContent = empty;
    root.appendChild(note);
    root.dataset.marks = '0';
    return { root };
  }
  const plot = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img',
    'aria-label': title,
    class: 'plot',
  });
  root.appendChild(plot);
  return { root, plot };
}

function legend(root, entries) {
  if (entries.length < 2) return;
  const list = document.createElement('ul');
  list.className = 'legend';
  entries.forEach(({ name, color, dashed }) => {
    const item = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = dashed ? 'swatch dashed' : 'swatch';
    swatch.style.borderColor = color;
    swatch.style.backgroundColor = dashed ? 'transparent' : color;
    item.append(swatch, document.createTextNode(name));
    list.appendChild(item);
  });
  root.appendChild(list);
}

// Y axis with gridlines; returns the value-to-pixel function.
function yAxis(plot, ticks, label, format) {
  const low = ticks[0];
  const high = ticks[ticks.length - 1];
  const bottom = HEIGHT - MARGIN.bottom;
  const y = (v) => bottom - ((v - low) / (high - low || 1)) * (bottom - MARGIN.top);
  for (const tick of ticks) {
    plot.appendChild(svg('line', { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(tick), y2: y(tick), class: 'grid' }));
    plot.appendChild(svg('text', { x: MARGIN.left - 6, y: y(tick) + 4, 'text-anchor': 'end', class: 'tick' }, format(tick)));
  }
  plot.appendChild(svg('line', { x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: bottom, class: 'axis' }));
  plot.appendChild(svg('text', {
    x: 14, y: (MARGIN.top + bottom) / 2, 'text-anchor': 'middle', class: 'axis-label',
    transform: `rotate(-90 14 ${(MARGIN.top + bottom) / 2})`,
  }, label));
  return y;
}

function xAxisLine(plot, label) {
  const bottom = HEIGHT - MARGIN.bottom;
  plot.appendChild(svg('line', { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: bottom, y2: bottom, class: 'axis' }));
  plot.appendChild(svg('text', { x: (MARGIN.left + WIDTH - MARGIN.right) / 2, y: HEIGHT - 6, 'text-anchor': 'middle', class: 'axis-label' }, label));
}

// Lines over time. `series`: [{name, points: [[ms, value or null]], dashed}]; a null value
// breaks the line. `xLabel` defaults to the local time of day.
export function lineChart({ name, title, yLabel, unit = '', series, empty, xLabel = 'time (local)', yMax, format = formatNumber }) {
  const values = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const frame = figure(name, title, values.length === 0 ? empty : null);
  if (!frame.plot) return frame.root;
  const { root, plot } = frame;
  // The time axis spans every sample, with or without a value, so that the charts of one
  // page line up.
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x1 === x0) { x0 -= 1000; x1 += 1000; }
  const top = yMax ?? Math.max(...values.map((p) => p[1]));
  const ticks = niceTicks(0, top > 0 ? top : 1);
  const y = yAxis(plot, ticks, yLabel, (v) => format(v) + unit);
  const x = (t) => MARGIN.left + ((t - x0) / (x1 - x0)) * (WIDTH - MARGIN.left - MARGIN.right);
  xAxisLine(plot, xLabel);
  const xTicks = 4;
  let previous = null;
  for (let i = 0; i <= xTicks; i++) {
    const t = x0 + ((x1 - x0) * i) / xTicks;
    // A span of a few seconds would repeat the same label.
    if (clock(t) === previous) continue;
    previous = clock(t);
    // The end labels align inward so that they are not cut at the edges.
    const anchor = i === 0 ? 'start' : i === xTicks ? 'end' : 'middle';
    plot.appendChild(svg('text', { x: x(t), y: HEIGHT - MARGIN.bottom + 16, 'text-anchor': anchor, class: 'tick' }, previous));
  }
  let marks = 0;
  series.forEach((s, index) => {
    const color = s.color || PALETTE[index % PALETTE.length];
    s.color = color;
    let path = '';
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null || v === undefined) { pen = false; continue; }
      path += `${pen ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    plot.appendChild(svg('path', { d: path, class: s.dashed ? 'line dashed' : 'line', stroke: color }));
    // Points are drawn only where they can be told apart; every point keeps a tooltip.
    const radius = s.points.length > 60 ? 1.5 : 3;
    for (const [t, v] of s.points) {
      if (v === null || v === undefined) continue;
      plot.appendChild(tooltip(svg('circle', { cx: x(t), cy: y(v), r: radius, fill: color, class: 'mark' }),
        `${s.name} at ${clock(t)}: ${format(v)}${unit}`));
      marks++;
    }
  });
  root.dataset.marks = String(marks);
  legend(root, series);
  return root;
}

// Bars per category, one bar per series side by side. `categories`: labels along x;
// `series`: [{name, values: [number or null per category]}].
export function barChart({ name, title, yLabel, unit = '', categories, series, empty, xLabel, format = formatNumber }) {
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const frame = figure(name, title, values.length === 0 ? empty : null);
  if (!frame.plot) return frame.root;
  const { root, plot } = frame;
  const ticks = niceTicks(0, Math.max(...values, 0) || 1);
  const y = yAxis(plot, ticks, yLabel, (v) => format(v) + unit);
  xAxisLine(plot, xLabel);
  const band = (WIDTH - MARGIN.left - MARGIN.right) / categories.length;
  const barWidth = Math.min(48, (band * 0.8) / series.length);
  const labelEvery = Math.ceil(categories.length / 12);
  let marks = 0;
  categories.forEach((category, c) => {
    const start = MARGIN.left + band * c + (band - barWidth * series.length) / 2;
    if (c % labelEvery === 0) {
      plot.appendChild(svg('text', { x: MARGIN.left + band * (c + 0.5), y: HEIGHT - MARGIN.bottom + 16, 'text-anchor': 'middle', class: 'tick' }, category));
    }
    series.forEach((s, index) => {
      const value = s.values[c];
      if (value === null || value === undefined) return;
      const color = s.color || PALETTE[index % PALETTE.length];
      const top = y(value);
      plot.appendChild(tooltip(svg('rect', {
        x: start + barWidth * index, y: top, width: Math.max(barWidth - 2, 1), height: Math.max(y(0) - top, 0.5),
        fill: color, class: 'mark',
      }), `${s.name}, ${category}: ${format(value)}${unit}`));
      marks++;
    });
  });
  series.forEach((s, index) => { s.color = s.color || PALETTE[index % PALETTE.length]; });
  root.dataset.marks = String(marks);
  legend(root, series);
  return root;
}

// Point estimates with 95% intervals, one row per group (a forest plot). `rows`:
// [{label, value, low, high, note}]; a row without a value says why instead.
export function intervalChart({ name, title, xLabel, unit = '', rows, empty, format = formatNumber, domain }) {
  const known = rows.filter((r) => r.value !== null && r.value !== undefined);
  const frame = figure(name, title, known.length === 0 ? empty : null);
  if (!frame.plot) return frame.root;
  const { root } = frame;
  const rowHeight = 34;
  const height = MARGIN.top + rows.length * rowHeight + MARGIN.bottom;
  const left = 150;
  const plot = svg('svg', { viewBox: `0 0 ${WIDTH} ${height}`, role: 'img', 'aria-label': title, class: 'plot' });
  root.replaceChild(plot, frame.plot);
  const lows = known.map((r) => r.low ?? r.value);
  const highs = known.map((r) => r.high ?? r.value);
  const [d0, d1] = domain || [Math.min(...lows), Math.max(...highs)];
  const ticks = niceTicks(d0, d1 > d0 ? d1 : d0 + 1);
  const [t0, t1] = [ticks[0], ticks[ticks.length - 1]];
  const x = (v) => left + ((v - t0) / (t1 - t0 || 1)) * (WIDTH - left - MARGIN.right);
  const bottom = height - MARGIN.bottom;
  for (const tick of ticks) {
    plot.appendChild(svg('line', { x1: x(tick), x2: x(tick), y1: MARGIN.top, y2: bottom, class: 'grid' }));
    plot.appendChild(svg('text', { x: x(tick), y: bottom + 16, 'text-anchor': 'middle', class: 'tick' }, format(tick) + unit));
  }
  plot.appendChild(svg('line', { x1: left, x2: WIDTH - MARGIN.right, y1: bottom, y2: bottom, class: 'axis' }));
  plot.appendChild(svg('text', { x: (left + WIDTH - MARGIN.right) / 2, y: height - 6, 'text-anchor': 'middle', class: 'axis-label' }, xLabel));
  let marks = 0;
  rows.forEach((row, index) => {
    const cy = MARGIN.top + rowHeight * (index + 0.5);
    const color = row.color || PALETTE[index % PALETTE.length];
    plot.appendChild(svg('text', { x: left - 8, y: cy + 4, 'text-anchor': 'end', class: 'row-label' }, row.label));
    if (row.value === null || row.value === undefined) {
      plot.appendChild(svg('text', { x: left + 6, y: cy + 4, class: 'tick' }, row.note || 'no data yet'));
      return;
    }
    const low = row.low ?? row.value;
    const high = row.high ?? row.value;
    const group = tooltip(svg('g', { class: 'mark' }),
      `${row.label}: ${format(row.value)}${unit} (95% CI ${format(low)}${unit} to ${format(high)}${unit})${row.note ? ', ' + row.note : ''}`);
    group.appendChild(svg('line', { x1: x(low), x2: x(high), y1: cy, y2: cy, stroke: color, class: 'interval' }));
    for (const end of [low, high]) {
      group.appendChild(svg('line', { x1: x(end), x2: x(end), y1: cy - 6, y2: cy + 6, stroke: color, class: 'interval' }));
    }
    group.appendChild(svg('circle', { cx: x(row.value), cy, r: 5, fill: color }));
    plot.appendChild(group);
    marks++;
  });
  root.dataset.marks = String(marks);
  return root;
}
