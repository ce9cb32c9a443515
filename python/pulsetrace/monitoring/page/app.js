// The live page of pulsetrace's monitoring server. It polls the JSON
// endpoints (relative URLs, so it works under a mount prefix too) and
// builds every element with createElement/textContent: nothing the server
// sends (operation and span names are the application's input) is ever
// parsed as HTML. The page's Content-Security-Policy forbids inline
// scripts and enforces Trusted Types, so an HTML sink would throw.
'use strict';

(function () {
  const POLL_MS = 2000;
  const CHART_SPAN_S = 600; // the latency chart shows the last 10 minutes
  const RATE_SPAN_S = 30; // request rates are averaged over up to 30 s of polls
  const TOKEN_KEY = 'pulsetrace.monitoring.token';
  const SVG = 'http://www.w3.org/2000/svg';

  const state = {
    samples: [], // [{t, ops: Map(key -> {count, errors, kind})}], oldest first
    latency: new Map(), // key -> [[t, p50, p99]], oldest first
    selected: null, // the charted operation's key
    names: new Map(), // key -> display name
    openTrace: null,
    needToken: false,
    drawn: new Map(), // panel -> the JSON it shows (unchanged: not rebuilt)
    timer: null,
  };

  // --- small helpers -----------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function ms(v) {
    if (typeof v !== 'number' || !isFinite(v)) return '–';
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    if (v >= 1) return v.toFixed(2);
    return v.toFixed(3);
  }

  function pct(v) {
    return typeof v === 'number' && isFinite(v) ? (v * 100).toFixed(v < 0.001 && v > 0 ? 3 : 1) + ' %' : '–';
  }

  function rate(v) {
    if (typeof v !== 'number' || !isFinite(v)) return '–';
    return v >= 10 ? v.toFixed(0) : v.toFixed(2);
  }

  function when(seconds) {
    if (typeof seconds !== 'number' || !isFinite(seconds)) return '–';
    const d = new Date(seconds * 1000);
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function opKey(row) {
    // An operation is its name, kind and target attributes (a client span's
    // server.address, ...): every field the statistics do not use.
    const extra = Object.keys(row)
      .filter((k) => !STAT_FIELDS.has(k))
      .sort()
      .map((k) => `${k}=${row[k]}`);
    return JSON.stringify([row.name, row.kind, extra]);
  }

  const STAT_FIELDS = new Set([
    'name', 'kind', 'count', 'errors', 'error_rate', 'throughput_per_s',
    'p50_ms', 'p90_ms', 'p99_ms', 'max_ms',
  ]);

  function target(row) {
    return Object.keys(row)
      .filter((k) => !STAT_FIELDS.has(k))
      .sort()
      .map((k) => `${k}=${row[k]}`)
      .join(' ');
  }

  // Whether ``panel`` already shows ``data``: a list is rebuilt only when
  // it changed, so a row being clicked or focused stays where it is.
  function unchanged(panel, data) {
    const text = JSON.stringify(data);
    if (state.drawn.get(panel) === text) return true;
    state.drawn.set(panel, text);
    return false;
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  // --- HTTP ----------------------------------------------------------------

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function askToken() {
    const given = window.prompt('Monitoring token (PULSETRACE_MONITORING_TOKEN):');
    if (given === null || !given.trim()) return null;
    try {
      sessionStorage.setItem(TOKEN_KEY, given.trim());
    } catch (e) {
      // storage refused (a private window): the token is used once
    }
    return given.trim();
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // nothing stored
    }
  }

  class HttpFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function request(method, path, body, tok) {
    const headers = { Accept: 'application/json' };
    const t = tok || token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const init = { method, headers, cache: 'no-store', credentials: 'same-origin' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    if ((r.headers.get('Content-Type') || '').startsWith('application/json')) {
      data = await r.json();
    }
    return { status: r.status, data };
  }

  // A read: the JSON body (a 503 of /health is an answer too), or a failure.
  async function read(path, okStatuses) {
    const { status, data } = await request('GET', path);
    if (status === 401) {
      state.needToken = true;
      throw new HttpFailure(401, 'a token is needed');
    }
    if (!(okStatuses || [200]).includes(status) || data === null) {
      const why = data && typeof data.error === 'string' ? data.error : 'HTTP ' + status;
      throw new HttpFailure(status, `${path}: ${why}`);
    }
    return data;
  }

  // --- polling -------------------------------------------------------------

  function selectedWindow() {
    return $('window').value;
  }

  async function poll() {
    state.needToken = false;
    const win = selectedWindow();
    const errorsOnly = $('errors-only').checked;
    const jobs = {
      status: read('apm/status'),
      all: read('apm/transactions?window=all'),
      minute: read('apm/transactions?window=1m'),
      traces: read('apm/traces?limit=30' + (errorsOnly ? '&error=true' : '')),
      errors: read('apm/errors'),
      health: read('health', [200, 503]),
      alerts: read('monitoring/alerts'),
      alerting: read('monitoring/status'),
    };
    if (win !== 'all' && win !== '1m') jobs.window = read('apm/transactions?window=' + win);
    const names = Object.keys(jobs);
    const settled = await Promise.allSettled(names.map((n) => jobs[n]));
    const got = {};
    const failures = [];
    settled.forEach((s, i) => {
      if (s.status === 'fulfilled') got[names[i]] = s.value;
      else failures.push(s.reason);
    });
    const now = Date.now() / 1000;
    const renders = [
      ['status', () => renderStatus(got.status)],
      ['all', () => recordSample(now, got.all)],
      ['minute', () => recordLatency(now, got.minute)],
      ['all', () => renderOperations(got[win === 'all' ? 'all' : win === '1m' ? 'minute' : 'window'])],
      ['traces', () => renderTraces(got.traces)],
      ['errors', () => renderErrors(got.errors)],
      ['health', () => renderHealth(got.health)],
      ['alerts', () => renderAlerts(got.alerts, got.alerting)],
    ];
    for (const [needs, render] of renders) {
      if (got[needs] === undefined) continue;
      try {
        render();
      } catch (e) {
        failures.push(e);
      }
    }
    renderTiles(got);
    renderChart();
    $('token-needed').hidden = !state.needToken;
    const conn = $('connection');
    if (failures.length === 0) {
      conn.textContent = 'live · updated ' + new Date().toLocaleTimeString();
      conn.className = 'connection ok';
    } else {
      const first = failures[0];
      conn.textContent = `${failures.length} of ${names.length} requests failed (${first && first.message ? first.message : first}); retrying`;
      conn.className = 'connection bad';
    }
  }

  // One poll at a time: a refresh asked for while one runs follows it.
  let polling = false;
  let again = false;

  async function tick() {
    clearTimeout(state.timer);
    if (polling) {
      again = true;
      return;
    }
    polling = true;
    try {
      await poll();
    } catch (e) {
      $('connection').textContent = 'disconnected: ' + (e && e.message ? e.message : e);
      $('connection').className = 'connection bad';
    }
    polling = false;
    if (again) {
      again = false;
      tick();
    } else {
      state.timer = setTimeout(tick, POLL_MS);
    }
  }

  // --- rendering: status, tiles ----------------------------------------------

  function renderStatus(s) {
    $('service').textContent = s.service || '';
    const parts = [
      s.enabled ? 'tracing on' : 'tracing off',
      'sample rate ' + s.sample_rate,
      s.traces_buffered + ' traces buffered',
      'up ' + Math.round(s.uptime_s) + ' s',
    ];
    $('agent').textContent = parts.join(' · ');
  }

  function recordSample(t, body) {
    const ops = new Map();
    for (const row of body.operations) {
      const key = opKey(row);
      ops.set(key, { count: row.count, errors: row.errors, kind: row.kind });
      state.names.set(key, row.name);
    }
    state.samples.push({ t, ops });
    while (state.samples.length > 2 && t - state.samples[1].t >= RATE_SPAN_S) state.samples.shift();
  }

  // Requests and errors per second per operation, from the oldest kept
  // sample to the newest: Map(key -> {rate, errorRate}).
  function rates() {
    const out = new Map();
    const n = state.samples.length;
    if (n < 2) return out;
    const a = state.samples[0];
    const b = state.samples[n - 1];
    const dt = b.t - a.t;
    if (dt <= 0) return out;
    for (const [key, now] of b.ops) {
      const then = a.ops.get(key) || { count: 0, errors: 0 };
      const dc = Math.max(0, now.count - then.count);
      const de = Math.max(0, now.errors - then.errors);
      out.set(key, { rate: dc / dt, errors: de / dt, kind: now.kind });
    }
    return out;
  }

  function renderTiles(got) {
    const r = rates();
    let req = 0;
    let err = 0;
    const servers = [...r.values()].filter((v) => v.kind === 'server');
    for (const v of servers.length ? servers : [...r.values()]) {
      req += v.rate;
      err += v.errors;
    }
    $('tile-rate').textContent = state.samples.length < 2 ? '–' : rate(req);
    $('tile-errors').textContent = state.samples.length < 2 ? '–' : req > 0 ? pct(err / req) : '0 %';
    if (got.all) $('tile-ops').textContent = String(got.all.operations.length);
    if (got.alerts) {
      const firing = got.alerts.alerts.filter((a) => a.state === 'firing').length;
      const t = $('tile-alerts');
      t.textContent = String(firing);
      t.className = 'value' + (firing ? ' bad' : '');
    }
    if (got.health) {
      const t = $('tile-health');
      t.textContent = got.health.status;
      t.className = 'value ' + got.health.status;
    }
  }

  // --- operations --------------------------------------------------------------

  function renderOperations(body) {
    if (!body) return;
    const tbody = $('operations').tBodies[0];
    clear(tbody);
    const r = rates();
    const rows = body.operations.slice().sort((a, b) => b.count - a.count || (a.name < b.name ? -1 : 1));
    for (const row of rows) {
      const key = opKey(row);
      const tr = el('tr');
      tr.dataset.operation = row.name;
      if (key === state.selected) tr.className = 'selected';
      const name = el('td', null, 'c-name');
      name.appendChild(el('span', row.name, 'op-name'));
      const tgt = target(row);
      if (tgt) name.appendChild(el('span', tgt, 'op-target'));
      tr.appendChild(name);
      tr.appendChild(el('td', row.kind, 'c-kind'));
      tr.appendChild(el('td', row.count, 'num c-count'));
      tr.appendChild(el('td', row.errors, 'num c-errors' + (row.errors ? ' bad' : '')));
      tr.appendChild(el('td', pct(row.error_rate), 'num c-error-rate'));
      const live = r.get(key);
      tr.appendChild(el('td', live ? rate(live.rate) : '–', 'num c-rate'));
      tr.appendChild(el('td', ms(row.p50_ms), 'num c-p50'));
      tr.appendChild(el('td', ms(row.p99_ms), 'num c-p99'));
      tr.appendChild(el('td', ms(row.max_ms), 'num c-max'));
      tr.addEventListener('click', () => {
        state.selected = key;
        for (const other of tbody.rows) other.classList.remove('selected');
        tr.classList.add('selected');
        renderChart();
      });
      tbody.appendChild(tr);
    }
    $('operations-empty').hidden = rows.length > 0;
  }

  // --- the latency chart (inline SVG) -------------------------------------------

  function recordLatency(t, body) {
    let busiest = null;
    for (const row of body.operations) {
      const key = opKey(row);
      state.names.set(key, row.name);
      if (!busiest || row.count > busiest.count) busiest = { key, count: row.count };
      if (!row.count) continue;
      let points = state.latency.get(key);
      if (!points) state.latency.set(key, (points = []));
      points.push([t, row.p50_ms, row.p99_ms]);
    }
    for (const [key, points] of state.latency) {
      while (points.length && t - points[0][0] > CHART_SPAN_S) points.shift();
      if (!points.length) state.latency.delete(key);
    }
    if (state.selected === null && busiest && busiest.count) state.selected = busiest.key;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function renderChart() {
    const box = $('chart');
    clear(box);
    const key = state.selected;
    $('chart-title').textContent = key === null ? '' : state.names.get(key) || '';
    const points = key === null ? null : state.latency.get(key);
    if (!points || !points.length) {
      box.appendChild(el('p', 'No latency recorded in the last minutes yet.', 'empty'));
      return;
    }
    const W = 900;
    const H = 220;
    const L = 56;
    const R = 12;
    const T = 12;
    const B = 26;
    const now = Date.now() / 1000;
    const t0 = now - CHART_SPAN_S;
    let top = 0;
    for (const p of points) top = Math.max(top, p[1] || 0, p[2] || 0);
    top = niceCeil(top > 0 ? top : 1);
    const x = (t) => L + ((t - t0) / CHART_SPAN_S) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img' });
    root.appendChild(svg('title', {})).textContent = 'p50 and p99 latency (ms) over the last 10 minutes';
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      root.appendChild(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
      const label = svg('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' });
      label.textContent = v === 0 ? '0' : String(+v.toPrecision(3));
      root.appendChild(label);
    }
    for (let m = 0; m <= CHART_SPAN_S / 60; m += 2) {
      const t = now - m * 60;
      const label = svg('text', { x: x(t), y: H - 6, class: 'axis', 'text-anchor': 'middle' });
      label.textContent = m === 0 ? 'now' : `-${m} min`;
      root.appendChild(label);
    }
    const line = (i, cls) => {
      const pts = points.filter((p) => typeof p[i] === 'number').map((p) => `${x(p[0]).toFixed(1)},${y(p[i]).toFixed(1)}`);
      if (pts.length === 1) {
        const [cx, cy] = pts[0].split(',');
        root.appendChild(svg('circle', { cx, cy, r: 3, class: cls }));
      } else if (pts.length) {
        root.appendChild(svg('polyline', { points: pts.join(' '), class: cls }));
      }
    };
    line(1, 'p50');
    line(2, 'p99');
    const legend = svg('text', { x: L + 8, y: T + 10, class: 'axis', 'text-anchor': 'start' });
    const a = svg('tspan', { class: 'p50-text' });
    a.textContent = '— p50 ';
    const b = svg('tspan', { class: 'p99-text' });
    b.textContent = '— p99 (ms)';
    legend.appendChild(a);
    legend.appendChild(b);
    root.appendChild(legend);
    box.appendChild(root);
  }

  function niceCeil(v) {
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v) return m * e;
    return 10 * e;
  }

  // --- traces and the waterfall --------------------------------------------------

  function renderTraces(body) {
    if (unchanged('traces', body.traces)) return;
    const tbody = $('traces').tBodies[0];
    clear(tbody);
    for (const t of body.traces) {
      const tr = el('tr', null, 'clickable' + (t.error ? ' error' : ''));
      tr.dataset.traceId = t.trace_id;
      tr.tabIndex = 0;
      tr.appendChild(el('td', when(t.start_time_unix_nano / 1e9), 'c-time'));
      tr.appendChild(el('td', t.operation, 'c-operation'));
      tr.appendChild(el('td', ms(t.duration_ms), 'num c-duration'));
      tr.appendChild(el('td', t.spans, 'num c-spans'));
      tr.appendChild(el('td', t.error ? 'error' : '', 'c-error'));
      tr.appendChild(el('td', t.keep_reason || '', 'c-reason'));
      const open = () => openTrace(t.trace_id);
      tr.addEventListener('click', open);
      tr.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') open();
      });
      tbody.appendChild(tr);
    }
    $('traces-empty').hidden = body.traces.length > 0;
  }

  async function openTrace(traceId) {
    if (!/^[0-9a-f]{32}$/i.test(traceId)) return;
    const panel = $('waterfall-panel');
    panel.hidden = false;
    state.openTrace = traceId;
    $('waterfall-title').textContent = traceId;
    const box = $('waterfall');
    clear(box);
    $('span-detail').hidden = true;
    box.appendChild(el('p', 'loading…', 'empty'));
    let trace;
    try {
      trace = await read('apm/traces/' + encodeURIComponent(traceId));
    } catch (e) {
      clear(box);
      box.appendChild(el('p', e.status === 404 ? 'This trace is no longer buffered.' : String(e.message), 'empty'));
      return;
    }
    if (state.openTrace !== traceId) return; // another one was opened meanwhile
    renderWaterfall(trace);
    panel.scrollIntoView({ block: 'nearest' });
  }

  function flatten(tree) {
    const out = [];
    const walk = (node, depth) => {
      out.push({ span: node, depth });
      for (const c of node.children || []) walk(c, depth + 1);
    };
    for (const root of tree) walk(root, 0);
    return out;
  }

  function renderWaterfall(trace) {
    const box = $('waterfall');
    clear(box);
    $('waterfall-title').textContent =
      `${trace.operation} · ${ms(trace.duration_ms)} ms · ${trace.spans} spans · ${trace.trace_id}`;
    const rows = flatten(trace.tree);
    if (!rows.length) return;
    // Start times are nanoseconds since the epoch: beyond a double's exact
    // integers, but sub-microsecond rounding does not show at this scale.
    const start = Math.min(...rows.map((r) => r.span.start_time_unix_nano));
    const end = Math.max(...rows.map((r) => r.span.start_time_unix_nano + r.span.duration_ms * 1e6));
    const total = Math.max(end - start, 1);
    const scale = el('div', null, 'wf-row wf-scale');
    scale.appendChild(el('div', 'span', 'wf-label'));
    scale.appendChild(el('div', 'duration', 'wf-duration'));
    const ticks = el('div', null, 'wf-track');
    for (let i = 0; i <= 4; i++) {
      const tick = el('span', ms((total / 1e6) * (i / 4)) + ' ms', 'wf-tick' + (i === 4 ? ' last' : ''));
      if (i < 4) tick.style.left = i * 25 + '%';
      ticks.appendChild(tick);
    }
    scale.appendChild(ticks);
    box.appendChild(scale);
    for (const { span, depth } of rows) {
      const row = el('div', null, 'wf-row' + (span.status === 'error' ? ' error' : ''));
      row.dataset.spanId = span.span_id;
      row.tabIndex = 0;
      const label = el('div', null, 'wf-label');
      label.style.paddingLeft = depth * 14 + 4 + 'px';
      label.appendChild(el('span', span.name, 'wf-name'));
      label.appendChild(el('span', span.kind, 'wf-kind'));
      row.appendChild(label);
      row.appendChild(el('div', ms(span.duration_ms) + ' ms', 'wf-duration'));
      const track = el('div', null, 'wf-track');
      const left = ((span.start_time_unix_nano - start) / total) * 100;
      const width = ((span.duration_ms * 1e6) / total) * 100;
      const bar = el('div', null, 'wf-bar');
      bar.style.left = Math.min(left, 99.7) + '%';
      bar.style.width = Math.max(width, 0.3) + '%';
      bar.title = `${span.name}: ${ms(span.duration_ms)} ms`;
      track.appendChild(bar);
      row.appendChild(track);
      const show = () => showSpan(span);
      row.addEventListener('click', show);
      row.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') show();
      });
      box.appendChild(row);
    }
  }

  function showSpan(span) {
    const box = $('span-detail');
    clear(box);
    box.hidden = false;
    box.appendChild(el('h3', span.name));
    const dl = el('dl');
    const add = (k, v) => {
      dl.appendChild(el('dt', k));
      dl.appendChild(el('dd', typeof v === 'string' ? v : JSON.stringify(v)));
    };
    add('span id', span.span_id);
    add('kind', span.kind);
    add('duration', ms(span.duration_ms) + ' ms');
    add('status', span.status + (span.status_message ? ': ' + span.status_message : ''));
    for (const k of Object.keys(span.attributes || {}).sort()) add(k, span.attributes[k]);
    for (const ev of span.events || []) add('event ' + (ev.name || ''), ev.attributes || {});
    box.appendChild(dl);
  }

  // --- errors -----------------------------------------------------------------------

  function traceButton(traceId) {
    const b = el('button', 'open', 'small');
    b.type = 'button';
    b.addEventListener('click', () => openTrace(traceId));
    return b;
  }

  function renderErrors(body) {
    if (unchanged('errors', body.errors)) return;
    const tbody = $('errors').tBodies[0];
    clear(tbody);
    for (const g of body.errors) {
      const tr = el('tr');
      tr.appendChild(el('td', g.type, 'c-type'));
      tr.appendChild(el('td', g.message, 'c-message'));
      tr.appendChild(el('td', g.location, 'c-location'));
      tr.appendChild(el('td', g.operation, 'c-operation'));
      tr.appendChild(el('td', g.count, 'num c-count'));
      tr.appendChild(el('td', when(g.first_seen)));
      tr.appendChild(el('td', when(g.last_seen)));
      const cell = el('td');
      if (g.sample_trace_id) cell.appendChild(traceButton(g.sample_trace_id));
      tr.appendChild(cell);
      tbody.appendChild(tr);
    }
    $('errors-empty').hidden = body.errors.length > 0;
  }

  // --- health -----------------------------------------------------------------------

  function renderHealth(body) {
    const badge = $('health-status');
    badge.textContent = body.status;
    badge.className = 'badge ' + body.status;
    const tbody = $('health').tBodies[0];
    clear(tbody);
    for (const c of body.checks) {
      const tr = el('tr', null, c.status === 'pass' ? '' : 'error');
      tr.appendChild(el('td', c.name, 'c-name'));
      tr.appendChild(el('td', c.status, 'c-status ' + c.status));
      tr.appendChild(el('td', c.critical ? 'yes' : 'no'));
      tr.appendChild(el('td', ms(c.latency_ms), 'num'));
      tr.appendChild(el('td', c.error || '', 'c-error'));
      tbody.appendChild(tr);
    }
    $('health-empty').hidden = body.checks.length > 0;
  }

  // --- alerts -------------------------------------------------------------------------

  function renderAlerts(body, alerting) {
    renderAlertingStatus(alerting);
    if (unchanged('alerts', body.alerts)) return;
    const lists = {
      firing: $('alerts-firing'),
      acknowledged: $('alerts-acknowledged'),
      resolved: $('alerts-history'),
    };
    for (const ul of Object.values(lists)) clear(ul);
    const shown = { firing: 0, acknowledged: 0, resolved: 0 };
    for (const a of body.alerts) {
      const ul = lists[a.state];
      if (!ul || (a.state === 'resolved' && shown.resolved >= 20)) continue;
      shown[a.state] += 1;
      ul.appendChild(alertItem(a));
    }
    for (const [s, ul] of Object.entries(lists)) {
      if (!shown[s]) ul.appendChild(el('li', 'none', 'empty'));
    }
  }

  function renderAlertingStatus(alerting) {
    if (!alerting) return;
    const parts = [`${alerting.rules} rules`, `evaluator cycles: ${alerting.evaluator.cycles}`];
    if (alerting.channels.length) parts.push('channels: ' + alerting.channels.join(', '));
    if (alerting.broken_rules.length) {
      parts.push('broken rules: ' + alerting.broken_rules.map((r) => r.id).join(', '));
    }
    if (alerting.failed_deliveries.length) {
      parts.push(`${alerting.failed_deliveries.length} failed deliveries`);
    }
    $('alerts-status').textContent = parts.join(' · ');
  }

  function alertItem(a) {
    const li = el('li', null, 'alert ' + a.state);
    li.dataset.alertId = a.id;
    const head = el('div', null, 'alert-head');
    head.appendChild(el('span', a.severity, 'badge sev-' + a.severity));
    head.appendChild(el('span', a.name, 'alert-name'));
    li.appendChild(head);
    li.appendChild(el('div', a.message, 'alert-message'));
    const facts = [];
    if (a.operation) facts.push('operation ' + a.operation);
    if (typeof a.value === 'number') {
      facts.push(`value ${+a.value.toPrecision(4)}` + (typeof a.threshold === 'number' ? ` against ${+a.threshold.toPrecision(4)}` : ''));
    }
    facts.push('fired ' + when(a.fired_at));
    if (a.state === 'acknowledged') facts.push(`acknowledged by ${a.acked_by} at ${when(a.acked_at)}`);
    if (a.state === 'resolved') facts.push('resolved ' + when(a.resolved_at));
    li.appendChild(el('div', facts.join(' · '), 'alert-facts'));
    const actions = el('div', null, 'alert-actions');
    if (a.state === 'firing') {
      const b = el('button', 'Acknowledge', 'ack');
      b.type = 'button';
      b.addEventListener('click', () => acknowledge(a.id, b));
      actions.appendChild(b);
    }
    if (a.trace_id) {
      const b = el('button', 'example trace', 'small');
      b.type = 'button';
      b.addEventListener('click', () => openTrace(a.trace_id));
      actions.appendChild(b);
    }
    li.appendChild(actions);
    return li;
  }

  async function acknowledge(id, button) {
    let tok = token();
    if (!tok) tok = askToken();
    if (!tok) return;
    button.disabled = true;
    try {
      const path = 'monitoring/alerts/' + encodeURIComponent(id) + '/acknowledge';
      const { status, data } = await request('POST', path, { by: 'live page' }, tok);
      if (status === 401) {
        forgetToken();
        notice('The token was refused; the next acknowledgement asks for it again.');
      } else if (status !== 200) {
        notice(`Could not acknowledge: ${data && data.error ? data.error : 'HTTP ' + status}`);
      } else {
        notice('');
      }
    } catch (e) {
      notice('Could not acknowledge: ' + (e && e.message ? e.message : e));
    }
    button.disabled = false;
    tick();
  }

  // --- start ----------------------------------------------------------------------------

  function start() {
    $('window').addEventListener('change', () => {
      tick();
    });
    $('errors-only').addEventListener('change', () => {
      tick();
    });
    $('waterfall-close').addEventListener('click', () => {
      $('waterfall-panel').hidden = true;
      state.openTrace = null;
    });
    $('token-button').addEventListener('click', () => {
      if (askToken()) {
        tick();
      }
    });
    tick();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
