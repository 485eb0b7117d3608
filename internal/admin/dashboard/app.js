// M1 dashboard: one page for m1-authz (scope "pod") and m1-orchestrator
// (scope "fleet"). A hash router shows one view at a time (#/operations,
// #/cache, #/policy, #/cost, #/health, and further routes such as
// #/proposals/<id>); every view is fed by the JSON documents under
// /api/m1/dashboard/ and refreshed every few seconds.
//
// Authorization: the page reads the admin token from the URL once, keeps it
// in sessionStorage (for requests that change state) and takes it out of
// the address bar; the server set a session cookie (HttpOnly, SameSite=
// Strict) when the page was opened with it, and that cookie alone lets a
// reload or a new tab read the dashboard.
//
// Every string from the API is rendered as text (textContent, text nodes):
// agents choose some of them (names, goals, tool arguments). No innerHTML.
'use strict';

(function () {
  const TOKEN_KEY = 'm1-admin-token';
  const RANGE_KEY = 'm1-history-range';
  const REFRESH_MS = 5000;

  // ---- session --------------------------------------------------------
  const url = new URL(window.location.href);
  if (url.searchParams.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, url.searchParams.get('token'));
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

  // ---- DOM helpers (text only) ------------------------------------------
  const $ = (id) => document.getElementById(id);

  // Signed out (no session cookie and no token: a proposal's link opened
  // in a new tab, say), the page asks for the token; it is kept in this
  // tab's sessionStorage only.
  function showLogin() {
    $('login').hidden = false;
    $('view').hidden = true;
    $('tabs').hidden = true;
    clearTimeout(timer);
  }

  // el makes an element: attrs are properties or attributes (class, id,
  // title, role, aria-*, data-*, href), children are nodes or text.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = String(v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function setText(id, text) {
    $(id).textContent = text === undefined || text === null ? '' : String(text);
  }

  function showMessage(id, msg) {
    const e = $(id);
    e.textContent = msg || '';
    e.hidden = !msg;
  }

  // ---- formatting -------------------------------------------------------
  const isNum = (x) => typeof x === 'number' && isFinite(x);
  const fmtInt = (n) => (isNum(n) ? Math.round(n).toLocaleString('en-US') : '–');
  const fmtUSD = (n) => (isNum(n) ? '$' + n.toFixed(n >= 100 ? 0 : n >= 1 ? 2 : 4) : '–');
  const fmtPct = (x) => (isNum(x) ? (100 * x).toFixed(1) + ' %' : '–');
  const fmtTime = (s) => (s ? new Date(s).toLocaleString() : '');
  function fmtSeconds(s) {
    if (!isNum(s)) return '–';
    if (s === 0) return '0';
    if (s < 1e-3) return (s * 1e6).toFixed(0) + ' µs';
    if (s < 1) return (s * 1e3).toFixed(1) + ' ms';
    if (s < 120) return s.toFixed(1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }
  function fmtBytes(b) {
    if (!isNum(b)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return b.toFixed(i ? 1 : 0) + ' ' + units[i];
  }
  function fmtRate(x) {
    if (!isNum(x)) return '–';
    return x >= 100 ? x.toFixed(0) : x >= 1 ? x.toFixed(2) : x.toFixed(3);
  }
  function fmtUnit(unit) {
    switch (unit) {
      case 's': return fmtSeconds;
      case 'bytes': return fmtBytes;
      case 'ratio': return fmtPct;
      case '/s': return (x) => (isNum(x) ? fmtRate(x) + '/s' : '–');
      case 'USD/h': return (x) => (isNum(x) ? fmtUSD(x) + '/h' : '–');
      default: return (x) => (isNum(x) ? (Number.isInteger(x) ? fmtInt(x) : x.toFixed(2)) : '–');
    }
  }
  function fmtBound(b) {
    return b.le_seconds === null ? 'longer' : '≤ ' + fmtSeconds(b.le_seconds);
  }
  // shortRev shortens a bundle revision for a table cell (the whole one is
  // its title).
  const shortRev = (r) => (r ? (r.startsWith('sha256:') ? 'sha256:' + r.slice(7, 19) : r) : '–');
  // statusClass gives a CSS class for a known status word, else none.
  const statusClass = (s) => (typeof s === 'string' && /^[a-z_]+$/.test(s) ? 'st-' + s : '');

  // ---- API --------------------------------------------------------------
  // apiGet reads a JSON document; the session cookie authorizes it, and
  // the token when the tab has it.
  async function apiGet(path) {
    const headers = {};
    if (token()) headers.Authorization = 'Bearer ' + token();
    const resp = await fetch(path, { headers, cache: 'no-store', credentials: 'same-origin' });
    return answer(resp, path);
  }

  // apiSend changes state (POST, DELETE): only with the token, never the
  // cookie alone.
  async function apiSend(method, path, body) {
    if (!token()) {
      const err = new Error('this tab has no admin token: open the dashboard URL with ?token=… to act');
      err.status = 401;
      throw err;
    }
    const resp = await fetch(path, {
      method, cache: 'no-store', credentials: 'same-origin',
      headers: { Authorization: 'Bearer ' + token(), 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return answer(resp, path);
  }

  async function answer(resp, path) {
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const err = new Error((body && body.reason) || path + ': HTTP ' + resp.status);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  const doc = (name, query) => apiGet('api/m1/dashboard/' + name + (query || ''));

  // loadDocs fetches dashboard documents by name (and the history of a
  // tab): each becomes data[name], or {error} when it failed.
  async function loadDocs(names, historyTab) {
    const jobs = names.map((n) => doc(n));
    if (historyTab) jobs.push(doc('history', '?tab=' + historyTab + '&range=' + currentRange()));
    const res = await Promise.allSettled(jobs);
    const data = {};
    names.forEach((n, i) => {
      data[n] = res[i].status === 'fulfilled' ? res[i].value : { error: res[i].reason.message, status: res[i].reason.status };
    });
    if (historyTab) {
      const h = res[res.length - 1];
      data.history = h.status === 'fulfilled' ? h.value : { error: h.reason.message, status: h.reason.status };
    }
    return data;
  }

  // ---- widgets ----------------------------------------------------------
  function panel(title, opts, ...children) {
    const o = opts || {};
    return el('section', { class: 'panel' + (o.wide ? ' wide' : ''), id: o.id, 'aria-label': title },
      el('h2', { title: o.promql || null }, title), o.promql ? el('code', { class: 'promql' }, o.promql) : null, ...children);
  }

  function tile(label, id, detailId) {
    return el('div', { class: 'tile' }, el('h3', {}, label), el('p', { class: 'big', id }, '–'),
      detailId ? el('p', { class: 'muted', id: detailId }) : null);
  }

  // table builds a table; fill(rows) replaces its body: rows are arrays of
  // cells, a cell is text or {text, class, title, node}.
  function table(columns) {
    const body = el('tbody');
    const t = el('table', {},
      el('thead', {}, el('tr', {}, columns.map((c) => el('th', { class: c.num ? 'num' : null, title: c.title || null }, c.label || c)))),
      body);
    t.fill = (rows, empty) => {
      if (!rows.length) {
        body.replaceChildren(el('tr', {}, el('td', { class: 'muted', colspan: columns.length }, empty || 'nothing yet')));
        return;
      }
      body.replaceChildren(...rows.map((cells) => el('tr', {}, cells.map((c, i) => {
        const spec = c !== null && typeof c === 'object' && !(c instanceof Node) ? c : { text: c };
        const cls = [columns[i] && columns[i].num ? 'num' : '', spec.class || ''].join(' ').trim();
        return el('td', { class: cls || null, title: spec.title || null }, spec.node || (spec.text === undefined || spec.text === null ? '' : String(spec.text)));
      }))));
    };
    return t;
  }

  // bars is a horizontal bar chart of labelled values (distributions,
  // counts by category): fill([{label, value, text}]).
  function bars(kind) {
    const box = el('div', { class: 'bars', role: 'list', 'data-kind': kind || null });
    box.fill = (rows, empty) => {
      const top = Math.max(0, ...rows.map((r) => r.value || 0));
      if (!rows.length || top === 0) {
        box.replaceChildren(el('p', { class: 'muted' }, empty || 'nothing yet'));
        return;
      }
      box.replaceChildren(...rows.map((r) => {
        const fill = el('span', { class: 'fill' + (r.class ? ' ' + r.class : '') });
        fill.style.width = (100 * (r.value || 0) / top).toFixed(1) + '%';
        return el('div', { class: 'bar', role: 'listitem' }, el('span', { class: 'label', title: r.label }, r.label),
          el('span', { class: 'track' }, fill), el('span', { class: 'value' }, r.text !== undefined ? r.text : fmtInt(r.value)));
      }));
    };
    return box;
  }

  const palette = ['#2563eb', '#15803d', '#b91c1c', '#9333ea', '#b45309', '#0891b2', '#be185d', '#4d7c0f', '#6b7280'];
  const colorOf = (label, i) => ({ allow: '#15803d', deny: '#b91c1c', succeeded: '#15803d', failed: '#b91c1c', denied: '#b45309' }[label] || palette[i % palette.length]);

  function chartSize(box) {
    return { width: Math.max(280, box.clientWidth || 0), height: 180 };
  }

  // lineChart draws one history panel; update(panel, times) redraws it.
  function lineChart(spec) {
    const box = el('div', { class: 'chart' });
    const note = el('p', { class: 'muted chart-note' });
    const promql = el('code', { class: 'promql' });
    const head = el('h2', {}, spec.title);
    const section = el('section', { class: 'panel', 'data-panel': spec.id, 'aria-label': spec.title }, head, promql, box, note);
    let plot = null;
    let labels = '';
    section.update = (p, times) => {
      const fmt = fmtUnit(p.unit);
      const queries = [...new Set(p.series.map((s) => s.promql).filter(Boolean))];
      promql.textContent = queries.join('\n');
      head.title = queries.join('\n');
      section.classList.toggle('has-promql', queries.length > 0);
      if (p.error) {
        note.textContent = 'Query failed: ' + p.error;
      } else if (!p.series.length || !times.length) {
        note.textContent = 'No data in this range yet.';
      } else {
        note.textContent = '';
      }
      const key = p.series.map((s) => s.label).join('\u0000');
      if (!p.series.length || typeof uPlot === 'undefined') {
        if (plot) { plot.destroy(); plot = null; labels = ''; }
        return;
      }
      const data = [times, ...p.series.map((s) => s.values)];
      if (plot && key === labels) {
        plot.setData(data);
        return;
      }
      if (plot) plot.destroy();
      labels = key;
      plot = new uPlot(Object.assign(chartSize(box), {
        series: [{}, ...p.series.map((s, i) => ({ label: s.label, stroke: colorOf(s.label, i), width: 1.5, value: (u, v) => fmt(v) }))],
        axes: [{}, { values: (u, vals) => vals.map(fmt), size: 70 }],
        scales: { y: { range: (u, min, max) => [Math.min(0, min || 0), Math.max(p.unit === 'ratio' ? 1 : 0, max || 0) || 1] } },
        legend: { live: true },
      }), data, box);
    };
    section.resize = () => { if (plot) plot.setSize(chartSize(box)); };
    return section;
  }

  // historyCharts shows the history panels of one tab, in the order the
  // server gives them.
  function historyCharts() {
    const grid = el('div', { class: 'charts' });
    const source = el('p', { class: 'muted source' });
    const empty = el('p', { class: 'muted source' });
    const wrap = el('div', { class: 'history' }, source, grid, empty);
    const charts = {};
    wrap.update = (h) => {
      if (!h || h.error) {
        source.textContent = 'History unavailable: ' + (h ? h.error : '');
        return;
      }
      source.textContent = 'Series: ' + h.detail + (h.source === 'prometheus' ? ' (hover a chart for its PromQL)' : '') + '.';
      const none = [];
      for (const p of h.panels) {
        // A chart without series (nothing of it in this scope yet) is
        // listed, not drawn; a failed query is drawn with its error.
        if (!p.series.length && !p.error) {
          none.push(p.title);
          if (charts[p.id]) charts[p.id].hidden = true;
          continue;
        }
        if (!charts[p.id]) {
          charts[p.id] = lineChart(p);
          grid.append(charts[p.id]);
        }
        charts[p.id].hidden = false;
        charts[p.id].update(p, h.t);
      }
      empty.textContent = none.length ? 'No data yet for: ' + none.join(' · ') + '.' : '';
    };
    wrap.resize = () => Object.values(charts).forEach((c) => c.resize());
    return wrap;
  }

  // stackedDays draws daily values stacked by key (uPlot bars): update(days,
  // field) with days [{day, <field>: {key: value}}].
  function stackedDays(title, field) {
    const box = el('div', { class: 'chart' });
    const note = el('p', { class: 'muted chart-note' });
    const section = el('section', { class: 'panel', 'data-panel': 'cost_by_' + field, 'aria-label': title }, el('h2', {}, title), box, note);
    let plot = null;
    let labels = '';
    section.update = (days) => {
      const totals = {};
      for (const d of days) for (const [k, v] of Object.entries(d[field] || {})) totals[k] = (totals[k] || 0) + v;
      let keys = Object.keys(totals).sort((a, b) => totals[b] - totals[a]);
      const other = keys.slice(6);
      keys = keys.slice(0, 6);
      if (other.length) keys.push('other');
      const value = (d, k) => (k === 'other' ? other.reduce((s, o) => s + ((d[field] || {})[o] || 0), 0) : (d[field] || {})[k] || 0);
      note.textContent = keys.length ? '' : 'No LLM cost in the last 30 days.';
      if (!keys.length || typeof uPlot === 'undefined') return;
      const xs = days.map((d) => Date.parse(d.day + 'T00:00:00Z') / 1000);
      const own = keys.map((k) => days.map((d) => value(d, k)));
      const nz = (v) => (v > 0 ? v : null); // no bar at all for a day without cost
      // Stacked: series i is the sum of keys i..n-1, drawn first, so each
      // later (smaller) one covers its lower part.
      const stacked = own.map((_, i) => days.map((_, j) => nz(own.slice(i).reduce((s, row) => s + row[j], 0))));
      const data = [xs, ...stacked];
      const key = keys.join('\u0000');
      if (plot && key === labels) { plot.setData(data); return; }
      if (plot) plot.destroy();
      labels = key;
      const barPaths = uPlot.paths.bars({ size: [0.7, 40] });
      plot = new uPlot(Object.assign(chartSize(box), {
        series: [{ value: (u, v) => (v ? new Date(v * 1000).toISOString().slice(0, 10) : '') },
          ...keys.map((k, i) => ({ label: k, fill: colorOf(k, i), stroke: colorOf(k, i), paths: barPaths, points: { show: false },
            value: (u, v, si, idx) => (idx === null || idx === undefined ? '' : fmtUSD(own[si - 1][idx])) }))],
        axes: [{}, { values: (u, vals) => vals.map(fmtUSD), size: 70 }],
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(0.01, max || 0)] } },
      }), data, box);
    };
    section.resize = () => { if (plot) plot.setSize(chartSize(box)); };
    return section;
  }

  function errorText(d) {
    return d && d.error ? d.error : '';
  }

  // ---- views ------------------------------------------------------------
  // A view mounts into the page and returns update(data), called with the
  // documents of every refresh. ctx: {meta, params, routes}.

  function fleetPanel() {
    const cols = [
      { label: 'pod' }, { label: 'service' }, { label: 'version' }, { label: 'up' }, { label: 'policy revision' },
      { label: 'checks/s', num: true }, { label: 'deny rate', num: true }, { label: 'p99', num: true }, { label: 'cache hit rate', num: true },
    ];
    const t = table(cols);
    const msg = el('p', { class: 'muted' });
    const p = panel('Fleet', { id: 'fleet' }, msg, t);
    p.update = (f) => {
      if (!f || f.error) { msg.textContent = 'Fleet unavailable: ' + errorText(f); t.fill([]); return; }
      const q = f.promql || {};
      const heads = t.querySelectorAll('th');
      ['version', 'version', 'version', 'up', 'revision', 'checks_per_second', 'deny_rate', 'p99_seconds', 'cache_hit_rate']
        .forEach((k, i) => { heads[i].title = q[k] || ''; });
      if (!f.prometheus.configured) {
        msg.textContent = 'Prometheus not configured (M1_PROMETHEUS_URL): the fleet\'s pods and mesh-wide series are not shown; runs, proposals, approvals and cost below come from the shared store.';
        t.fill([], 'no Prometheus');
        return;
      }
      msg.textContent = (f.prometheus.error ? 'Some queries failed: ' + f.prometheus.error + ' · ' : '') +
        f.pods.length + ' M1 processes scraped by Prometheus at ' + f.prometheus.url + ' (hover a column for its PromQL).';
      t.fill(f.pods.map((p) => [p.instance, p.service, p.version, { text: p.up === null ? '?' : p.up ? 'up' : 'down', class: p.up === false ? 'st-failed' : 'st-ok' },
        { text: shortRev(p.revision), title: p.revision, class: 'mono' }, p.service === 'm1-authz' ? fmtRate(p.checks_per_second) : '',
        p.service === 'm1-authz' ? fmtPct(p.deny_rate) : '', p.service === 'm1-authz' ? fmtSeconds(p.p99_seconds) : '',
        p.service === 'm1-authz' ? fmtPct(p.cache_hit_rate) : '']), 'Prometheus scrapes no M1 process yet');
    };
    return p;
  }

  function operationsView(root, ctx) {
    const fleet = ctx.meta.scope === 'fleet' ? fleetPanel() : null;
    const tiles = el('section', { class: 'tiles' },
      tile('Active runs', 'ops-active'), tile('Run success rate (24 h)', 'ops-success', 'ops-success-detail'),
      tile('Pending proposals', 'ops-pending', 'ops-pending-detail'), tile(ctx.meta.scope === 'fleet' ? 'Checks, fleet' : 'Checks', 'ops-checks', 'ops-checks-detail'));
    const charts = historyCharts();
    const duration = bars('duration');
    const byStatus = bars('status');
    const tools = table([{ label: 'tool' }, { label: 'outcome' }, { label: 'executions', num: true }]);
    const toolsNote = el('p', { class: 'muted' });
    const byRisk = bars('risk');
    const byAge = bars('age');
    const pending = table([{ label: 'waiting' }, { label: 'proposal' }, { label: 'principal' }, { label: 'tool' }, { label: 'arguments' }, { label: 'risk' }, { label: 'from' }]);
    const pendingNote = el('p', { class: 'muted' }, el('span', { id: 'pending-total' }, '–'), ' pending · oldest ', el('span', { id: 'pending-oldest' }, '–'));
    const runs = table([{ label: 'created' }, { label: 'agent' }, { label: 'goal' }, { label: 'status' }, { label: 'cost', num: true }, { label: 'updated' }]);
    const toolsPanel = panel('Tool executions by tool and outcome', {}, toolsNote, tools);
    root.append(...[fleet, tiles, charts,
      el('div', { class: 'grid' },
        panel('Run duration (ended runs, 24 h)', {}, duration), panel('Runs by status (24 h)', {}, byStatus), toolsPanel,
        panel('Pending proposals by risk', {}, byRisk), panel('Pending proposals by age', {}, byAge)),
      panel('Waiting for approval', { wide: true, id: 'pending' }, pendingNote, pending),
      panel('Recent runs', { wide: true, id: 'runs' }, runs)].filter(Boolean));
    return (d) => {
      if (fleet) fleet.update(d.fleet);
      charts.update(d.history);
      const o = d.operations;
      if (o && !o.error) {
        setText('ops-active', fmtInt(o.active_runs));
        setText('ops-success', fmtPct(o.runs.success_rate));
        setText('ops-success-detail', fmtInt(o.runs.total) + ' runs since ' + fmtTime(o.since) + (o.runs.truncated ? ' (the newest 1000)' : ''));
        setText('ops-pending', fmtInt(o.pending_proposals.total));
        const oldestAge = o.pending_proposals.oldest.length ? o.pending_proposals.oldest[0].age_seconds : null;
        setText('ops-pending-detail', oldestAge === null ? 'none waiting' : 'oldest waits ' + fmtSeconds(oldestAge));
        duration.fill(o.runs.duration.buckets.map((b) => ({ label: fmtBound(b), value: b.count })), 'no run ended in the last 24 hours');
        byStatus.fill(Object.keys(o.runs.by_status).sort().map((k) => ({ label: k, value: o.runs.by_status[k], class: statusClass(k) })), 'no runs in the last 24 hours');
        const te = o.tool_executions;
        toolsNote.textContent = te.error ? 'Prometheus: ' + te.error :
          te.source === 'prometheus' ? 'The fleet, last 24 hours (Prometheus).' : 'This process since it started.';
        toolsPanel.querySelector('h2').title = te.promql || '';
        tools.fill(te.rows.map((r) => [r.tool, { text: r.outcome, class: statusClass(r.outcome) }, fmtInt(r.count)]), 'no tool executions');
        byRisk.fill(Object.keys(o.pending_proposals.by_risk).sort().map((k) => ({ label: k, value: o.pending_proposals.by_risk[k] })), 'no proposal waits');
        byAge.fill(o.pending_proposals.by_age.map((b) => ({ label: b.le_seconds === null ? 'over an hour' : 'under ' + fmtSeconds(b.le_seconds), value: b.count })), 'no proposal waits');
      } else {
        for (const id of ['ops-active', 'ops-success', 'ops-pending']) setText(id, '–');
        setText('ops-success-detail', errorText(o));
      }
      const m = d.metrics;
      if (fleet) {
        const pods = d.fleet && !d.fleet.error ? d.fleet.pods.filter((p) => p.service === 'm1-authz') : [];
        const rate = pods.reduce((s, p) => s + (p.checks_per_second || 0), 0);
        const denied = pods.reduce((s, p) => s + (p.checks_per_second || 0) * (p.deny_rate || 0), 0);
        setText('ops-checks', pods.length ? fmtRate(rate) + '/s' : '–');
        setText('ops-checks-detail', pods.length ? fmtPct(rate ? denied / rate : null) + ' denied · ' + pods.length + ' sidecars' : 'needs Prometheus (M1_PROMETHEUS_URL)');
      } else if (m && !m.error) {
        setText('ops-checks', fmtInt(m.checks.total));
        setText('ops-checks-detail', fmtInt(m.checks.allow) + ' allowed · ' + fmtInt(m.checks.deny) + ' denied since start');
      }
      const pd = d.proposals;
      if (pd && !pd.error) {
        setText('pending-total', fmtInt(pd.total));
        setText('pending-oldest', pd.total ? fmtSeconds(pd.oldest_age_seconds) : '–');
        pending.fill(pd.pending.map((p) => [fmtSeconds(p.age_seconds), { node: proposalLink(p.id, ctx) }, p.agent, p.tool,
          { text: p.canonical_args || p.args, class: 'args' }, { text: p.risk, class: statusClass(p.risk) }, origin(p)]), 'no proposal waits');
      } else {
        pending.fill([], 'Proposals unavailable: ' + errorText(pd));
      }
      const r = d.runs;
      if (r && !r.error) {
        runs.fill(r.runs.map((x) => [fmtTime(x.created_at), x.agent, { text: x.goal, class: 'goal' }, { text: x.status, class: statusClass(x.status) },
          fmtUSD(x.usage && x.usage.cost_usd), fmtTime(x.updated_at)]), 'no runs');
      } else {
        runs.fill([], 'Runs unavailable: ' + errorText(r));
      }
    };
  }

  // origin says where a proposal came from, as text.
  function origin(p) {
    if (p.origin === 'sidecar') return 'sidecar ' + (p.sidecar || '?') + (p.pod ? ' (pod ' + p.pod + ')' : '');
    return 'run ' + (p.run_id || '');
  }

  // proposalView shows one proposal as the person who decides it needs it:
  // where it came from, its canonical arguments exactly as an approval
  // binds them, whether args_sha256 is theirs, and the commands to decide.
  function proposalView(root, ctx) {
    const field = (label, id, code) => [el('dt', {}, label), el('dd', {}, code ? el('code', { id }) : el('span', { id }))];
    root.append(el('section', { class: 'proposal', id: 'proposal-view' },
      el('p', {}, el('a', { href: '#/operations' }, '← dashboard')),
      el('div', { class: 'panel' },
        el('h2', {}, 'Proposal ', el('code', { id: 'pv-id' }, ctx.params.id), ' ', el('span', { id: 'pv-status', class: 'badge' })),
        el('p', { id: 'pv-error', class: 'error', hidden: true }),
        el('p', { id: 'pv-warning', class: 'error', hidden: true }),
        el('dl', { class: 'fields' },
          field('tool', 'pv-tool', true), field('principal', 'pv-principal', true), field('risk', 'pv-risk'),
          field('from', 'pv-origin'), field('sidecar', 'pv-sidecar', true), field('pod', 'pv-pod', true),
          field('decision', 'pv-decision', true), field('filed', 'pv-created'), field('age', 'pv-age'),
          field('expires', 'pv-expires'), field('reason', 'pv-reason'), field('args_sha256', 'pv-sha', true)),
        el('h2', {}, 'Arguments (RFC 8785 canonical form, as hashed and signed)'),
        el('pre', { id: 'pv-args', class: 'args' }),
        el('h2', {}, 'Decide'),
        el('p', {}, 'Approve on a machine that holds the operator\'s signing key (the key never comes here):'),
        el('pre', { id: 'pv-approve', class: 'cmd' }),
        el('p', {}, 'or reject with a reason the client will see:'),
        el('pre', { id: 'pv-reject', class: 'cmd' }))));
    return (d) => {
      const p = d['proposals/' + encodeURIComponent(ctx.params.id)];
      if (!p || p.error) {
        showMessage('pv-error', p && p.status === 404 ? 'No such proposal.' : 'Cannot load the proposal: ' + errorText(p));
        return;
      }
      showMessage('pv-error', '');
      setText('pv-id', p.id);
      const badge = $('pv-status');
      badge.textContent = p.status;
      badge.className = 'badge ' + statusClass(p.status).replace('st-', '');
      setText('pv-tool', p.tool);
      setText('pv-principal', p.agent);
      setText('pv-risk', p.risk || '(not in the tool registry)');
      setText('pv-origin', origin(p));
      setText('pv-sidecar', p.sidecar || '');
      setText('pv-pod', p.pod || '');
      setText('pv-decision', p.decision_id || '');
      setText('pv-created', fmtTime(p.created_at));
      setText('pv-age', fmtSeconds(p.age_seconds));
      setText('pv-expires', fmtTime(p.expires_at));
      setText('pv-reason', p.reason || '');
      setText('pv-sha', p.args_sha256);
      let args = p.canonical_args;
      try {
        args = JSON.stringify(JSON.parse(p.canonical_args), null, 2);
      } catch (e) {
        // shown as stored
      }
      setText('pv-args', args || '');
      showMessage('pv-warning', p.args_error ? 'Do not approve: ' + p.args_error : '');
      setText('pv-approve', p.approvable ? p.approve_command : '(not pending: nothing to approve)');
      setText('pv-reject', p.status === 'pending' ? p.reject_command : '');
    };
  }

  // proposalLink links a proposal to its own view when one is routed
  // (#/proposals/<id>), else shows its id.
  function proposalLink(id, ctx) {
    if (!ctx.routes['proposals/:id']) return el('span', { class: 'mono' }, id);
    return el('a', { href: '#/proposals/' + encodeURIComponent(id), class: 'mono' }, id);
  }

  function cacheView(root, ctx) {
    const pod = ctx.meta.scope === 'pod';
    const tiles = el('section', { class: 'tiles' },
      tile('Decision cache', 'cache-state', 'cache-why'), tile('Hit rate (since start)', 'cache-hit-rate', 'cache-hits'),
      tile('L1 entries', 'cache-entries', 'cache-entries-detail'), tile('Evictions', 'cache-evictions', 'cache-tiers'));
    const analysis = table([{ label: 'input the policy reads' }, { label: 'value' }]);
    const pods = table([{ label: 'pod' }, { label: 'hit rate', num: true }]);
    const podsNote = el('p', { class: 'muted' });
    const charts = historyCharts();
    root.append(...(pod ? [tiles, charts, panel('Policy analysis: what decisions depend on', { wide: true }, analysis)]
      : [panel('Hit rate by pod (Prometheus)', { wide: true, id: 'cache-pods' }, podsNote, pods), charts]));
    return (d) => {
      charts.update(d.history);
      const c = d.cache;
      if (!pod) {
        if (!c || c.error) { podsNote.textContent = errorText(c); return; }
        podsNote.textContent = c.prometheus.configured ? 'The decision caches live in the sidecars; PromQL: ' + c.promql
          : 'Prometheus not configured (M1_PROMETHEUS_URL): the sidecars\' caches are not visible from here; open a sidecar\'s dashboard.';
        pods.fill(c.pods.map((p) => [p.instance, fmtPct(p.cache_hit_rate)]), c.prometheus.configured ? 'no sidecar scraped' : 'no Prometheus');
        return;
      }
      if (c && !c.error) {
        setText('cache-state', c.decision_cache ? 'on' : 'off');
        setText('cache-why', c.decision_cache ? (c.enabled ? 'the policy analysis allows caching' : '') : c.cache_off_reason || (c.enabled ? '' : 'no L1 cache configured (M1_CACHE_SIZE=0)'));
        setText('cache-entries', c.enabled ? fmtInt(c.l1_entries) : '–');
        setText('cache-entries-detail', c.enabled ? 'of ' + fmtInt(c.l1_max_entries) + ' · TTL ' + c.ttl : 'cache off');
        setText('cache-evictions', c.enabled ? fmtInt(c.l1_evictions) : '–');
        const t = c.tiered;
        setText('cache-tiers', t ? 'L2 ' + (t.l2_enabled ? 'consulted' : 'skipped') + ' (mode ' + t.mode + ', Redis ' + (t.redis_connected ? 'up' : 'down') + ')' : 'L1 only (no REDIS_URL)');
      }
      const m = d.metrics;
      if (m && !m.error) {
        const hits = m.cache.hits || {};
        setText('cache-hit-rate', fmtPct(m.cache.hit_rate));
        setText('cache-hits', Object.keys(hits).sort().map((k) => k + ' ' + fmtInt(hits[k])).join(' · ') + ' · misses ' + fmtInt(m.cache.misses));
      }
      const p = d.policy;
      if (p && !p.error) {
        const needs = p.needs || {};
        analysis.fill([['cacheable', p.cacheable ? 'yes' : 'no'], ...Object.keys(needs).sort().map((k) => [k, JSON.stringify(needs[k])])]);
      }
    };
  }

  function policyView(root, ctx) {
    const pod = ctx.meta.scope === 'pod';
    const tiles = el('section', { class: 'tiles' },
      tile('Approvals (7 days)', 'ap-approved', 'ap-detail'), tile('Rubber-stamped (< 2 s)', 'ap-stamp', 'ap-stamp-detail'),
      tile('Time to approval', 'ap-p50', 'ap-p90'), tile(pod ? 'Policy revision' : 'Policy revisions', 'pol-revision', 'pol-revision-detail'));
    const charts = historyCharts();
    const wait = bars('time-to-approval');
    const ops = table([{ label: 'operator' }, { label: 'approvals', num: true }, { label: 'under 2 s', num: true }, { label: 'median wait', num: true }]);
    const grants = table([{ label: 'agent' }, { label: 'tool' }, { label: 'arguments (SHA-256)' }, { label: 'approvals', num: true }, { label: 'operators' }, { label: 'last' }]);
    const reasons = table([{ label: 'decision' }, { label: 'reason' }, { label: 'count', num: true }]);
    const tokens = bars('tokens');
    const tools = table([{ label: 'tool' }, { label: 'risk' }, { label: 'requires approval' }]);
    const revs = table([{ label: 'revision' }, { label: 'pods' }]);
    const revocations = table([{ label: 'revoked' }, { label: 'until' }]);
    root.append(tiles, charts,
      el('div', { class: 'grid' },
        panel('Time from proposal to approval', {}, wait),
        panel('Approvals per operator', { id: 'by-operator' }, ops),
        pod ? panel('Decisions by reason (since start)', {}, reasons) : panel('Active revision per sidecar', { id: 'revisions' }, revs),
        pod ? panel('Token verifications (since start)', {}, tokens) : null,
        pod ? panel('Revocations in force', { id: 'revocations' }, revocations) : null),
      panel('Grant candidates: the same agent, tool and arguments approved again and again', { wide: true, id: 'grants' }, grants),
      ...(pod ? [panel('Tool registry', { wide: true }, tools)] : []));
    return (d) => {
      charts.update(d.history);
      const a = d.approvals;
      if (a && !a.error) {
        setText('ap-approved', fmtInt(a.approved));
        setText('ap-detail', fmtInt(a.rejected) + ' rejected · ' + fmtInt(a.expired) + ' expired · ' + fmtInt(a.auto_approved) + ' by --auto-risk · ' + fmtInt(a.granted) + ' by grants' + (a.truncated ? ' (newest 10,000)' : ''));
        setText('ap-stamp', fmtPct(a.rubber_stamp.rate));
        setText('ap-stamp-detail', fmtInt(a.rubber_stamp.count) + ' approvals given under ' + a.rubber_stamp.threshold_seconds + ' s of the proposal');
        setText('ap-p50', 'p50 ' + fmtSeconds(a.time_to_approval.p50_seconds));
        setText('ap-p90', 'p90 ' + fmtSeconds(a.time_to_approval.p90_seconds) + ' · max ' + fmtSeconds(a.time_to_approval.max_seconds));
        wait.fill(a.time_to_approval.buckets.map((b) => ({ label: fmtBound(b), value: b.count, class: b.le_seconds !== null && b.le_seconds <= 2 ? 'st-failed' : '' })), 'no approvals in 7 days');
        ops.fill(a.by_operator.map((o) => [o.operator, fmtInt(o.approvals), fmtInt(o.rubber_stamped), fmtSeconds(o.median_seconds)]), 'no approvals in 7 days');
        grants.fill(a.grant_candidates.map((g) => [g.agent, g.tool, { text: g.args_sha256.slice(0, 16) + '…', title: g.args_sha256, class: 'mono' },
          fmtInt(g.approvals), g.operators.join(', '), fmtTime(g.last_at)]), 'no agent was approved ' + 3 + ' times for the same call');
      } else {
        setText('ap-detail', errorText(a));
        wait.fill([], 'Approvals unavailable: ' + errorText(a));
      }
      const p = d.policy;
      if (pod && p && !p.error) {
        setText('pol-revision', shortRev(p.revision));
        $('pol-revision').title = p.revision || '';
        setText('pol-revision-detail', 'decision cache ' + (p.decision_cache ? 'on' : 'off') + ' · ' + fmtInt(p.revocations) + ' revocations');
        const t = p.tools || {};
        tools.fill(Object.keys(t).sort().map((n) => [n, t[n].risk, t[n].requires_approval ? 'yes' : 'no']));
        revocations.fill((p.revocations_list || []).map((r) => [r.jti ? 'token ' + r.jti : 'subject ' + r.sub, r.until ? fmtTime(r.until) : 'until lifted']), 'none');
      } else if (!pod && p && !p.error) {
        setText('pol-revision', p.prometheus.configured ? fmtInt(p.revisions.length) : '–');
        setText('pol-revision-detail', !p.prometheus.configured ? 'Prometheus not configured (M1_PROMETHEUS_URL)' : p.consistent ? 'every sidecar decides with the same bundle' : 'the sidecars disagree: a rollout in progress or stuck');
        revs.fill(p.revisions.map((r) => [{ text: shortRev(r.revision), title: r.revision, class: 'mono' }, r.pods.join(', ')]), p.prometheus.configured ? 'no sidecar scraped' : 'Prometheus not configured');
      }
      const m = d.metrics;
      if (pod && m && !m.error) {
        reasons.fill(m.checks.by_reason.map((r) => [{ text: r.decision, class: statusClass(r.decision) }, r.reason, fmtInt(r.count)]), 'no checks yet');
        const tv = m.token_verifications || {};
        tokens.fill(Object.keys(tv).sort().map((k) => ({ label: k, value: tv[k], class: k === 'ok' ? 'st-ok' : 'st-failed' })), 'no tokens presented yet');
      }
    };
  }

  function costView(root, ctx) {
    const tiles = el('section', { class: 'tiles' },
      tile('LLM cost, last 24 h', 'cost-24h', 'cost-24h-detail'), tile('Month to date', 'cost-mtd', 'cost-mtd-detail'),
      tile('Projected month end', 'cost-projected', 'cost-method'), tile('Tokens per successful run', 'cost-tokens', 'cost-tokens-detail'));
    const byModel = stackedDays('Cost per day by model (30 days)', 'by_model');
    const byAgent = stackedDays('Cost per day by agent (30 days)', 'by_agent');
    const charts = historyCharts();
    const rows = table([{ label: 'agent' }, { label: 'model' }, { label: 'calls', num: true }, { label: 'input tokens', num: true },
      { label: 'output tokens', num: true }, { label: 'cost', num: true }]);
    root.append(tiles, el('div', { class: 'charts' }, byModel, byAgent), charts, panel('LLM cost by agent and model, last 24 hours', { wide: true, id: 'costs' }, rows));
    return (d) => {
      charts.update(d.history);
      const c = d.costs;
      if (!c || c.error) {
        setText('cost-24h', '–');
        setText('cost-24h-detail', errorText(c));
        rows.fill([], 'Costs unavailable: ' + errorText(c));
        return;
      }
      setText('cost-24h', fmtUSD(c.total.usage.cost_usd));
      setText('cost-24h-detail', fmtInt(c.total.calls) + ' LLM calls since ' + fmtTime(c.since));
      const p = c.projection;
      setText('cost-mtd', fmtUSD(p.month_to_date_usd));
      setText('cost-mtd-detail', p.month + ', ' + p.days_elapsed.toFixed(1) + ' of ' + p.days_in_month + ' days');
      setText('cost-projected', fmtUSD(p.projected_usd));
      setText('cost-method', 'Method: ' + p.method + '.');
      const t = c.tokens_per_successful_run;
      setText('cost-tokens', fmtInt(t.mean_tokens));
      setText('cost-tokens-detail', t.runs ? 'mean of the latest ' + fmtInt(t.runs) + ' completed runs · ' + fmtUSD(t.mean_cost_usd) + ' per run' : 'no completed run yet');
      byModel.update(c.days);
      byAgent.update(c.days);
      rows.fill(c.rows.map((r) => [r.agent, r.model, fmtInt(r.calls), fmtInt(r.usage.input_tokens), fmtInt(r.usage.output_tokens), fmtUSD(r.usage.cost_usd)]), 'no LLM calls in the last 24 hours');
    };
  }

  function healthView(root, ctx) {
    const tiles = el('section', { class: 'tiles' },
      tile('Memory', 'hl-memory', 'hl-memory-detail'), tile('Goroutines', 'hl-goroutines'),
      tile('Audit queue', 'hl-audit', 'hl-audit-detail'), tile('Redis', 'hl-redis', 'hl-redis-detail'));
    const checks = table([{ label: 'check' }, { label: 'status' }, { label: 'detail' }, { label: 'info' }]);
    const charts = historyCharts();
    root.append(panel('Health checks (/health)', { wide: true, id: 'health-checks' }, checks), tiles, charts);
    return (d) => {
      charts.update(d.history);
      const h = d.health;
      if (!h || h.error) { checks.fill([], 'Health unavailable: ' + errorText(h)); return; }
      const names = Object.keys(h.checks || {}).sort();
      checks.fill(names.map((n) => {
        const c = h.checks[n];
        const info = c.info ? Object.keys(c.info).sort().map((k) => k + '=' + (typeof c.info[k] === 'object' ? JSON.stringify(c.info[k]) : c.info[k])).join(' ') : '';
        return [n, { text: c.status, class: statusClass(c.status) }, c.detail || '', { text: info, class: 'info' }];
      }));
      const mem = ((h.checks || {}).memory || {}).info;
      setText('hl-memory', mem ? fmtBytes(mem.heap_alloc_bytes) : '–');
      setText('hl-memory-detail', mem ? 'heap · ' + fmtBytes(mem.sys_bytes) + ' from the OS' : '');
      setText('hl-goroutines', mem ? fmtInt(mem.goroutines) : '–');
      const db = (h.checks || {}).database || {};
      const info = db.info || {};
      const queued = isNum(info.queue_depth) ? info.queue_depth : info.audit_queue_depth;
      const spooled = isNum(info.spool_events) ? info.spool_events : info.audit_spool_events;
      setText('hl-audit', info.audit === 'off' ? 'off' : fmtInt(queued) + ' queued');
      setText('hl-audit-detail', (isNum(info.written) ? fmtInt(info.written) + ' written · ' : '') + fmtInt(spooled) + ' spooled · store ' + (info.backend || '?'));
      const redis = (h.checks || {}).redis;
      setText('hl-redis', redis ? redis.status : 'n/a');
      setText('hl-redis-detail', redis ? (redis.info && redis.info.rtt ? 'RTT ' + redis.info.rtt : redis.detail || '') : 'not used by this process');
    };
  }

  // ---- routes -----------------------------------------------------------
  // routes maps a hash path pattern (":name" matches one segment) to a
  // view: tab (the tab highlighted), load(params, ctx) → data, and
  // mount(root, ctx) → update(data). The five tabs are the first five.
  const routes = {
    operations: {
      tab: 'operations', label: 'Operations', mount: operationsView,
      load: (p, ctx) => loadDocs(['operations', 'runs', 'proposals'].concat(ctx.meta.scope === 'fleet' ? ['fleet'] : ['metrics']), 'operations'),
    },
    cache: {
      tab: 'cache', label: 'Cache', mount: cacheView,
      load: (p, ctx) => loadDocs(ctx.meta.scope === 'fleet' ? ['cache'] : ['cache', 'metrics', 'policy'], 'cache'),
    },
    policy: {
      tab: 'policy', label: 'Policy & Security', mount: policyView,
      load: (p, ctx) => loadDocs(ctx.meta.scope === 'fleet' ? ['approvals', 'policy'] : ['approvals', 'policy', 'metrics'], 'policy'),
    },
    cost: { tab: 'cost', label: 'Cost', mount: costView, load: () => loadDocs(['costs'], 'cost') },
    health: { tab: 'health', label: 'System Health', mount: healthView, load: () => loadDocs(['health'], 'health') },
    // #/proposals/<id>: where an MCP client's URL elicitation points the
    // person a held call waits for (DESIGN §10).
    'proposals/:id': { tab: null, mount: proposalView, load: (p) => loadDocs(['proposals/' + encodeURIComponent(p.id)]) },
  };
  const tabs = ['operations', 'cache', 'policy', 'cost', 'health'];

  function matchRoute(hash) {
    const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
    if (!parts.length) return { key: 'operations', params: {} };
    for (const key of Object.keys(routes)) {
      const pat = key.split('/');
      if (pat.length !== parts.length) continue;
      const params = {};
      if (pat.every((s, i) => (s.startsWith(':') ? ((params[s.slice(1)] = parts[i]), true) : s === parts[i]))) return { key, params };
    }
    return null;
  }

  // ---- tabs (ARIA tablist, keyboard) ---------------------------------------
  function buildTabs() {
    const nav = $('tabs');
    nav.replaceChildren(...tabs.map((id) => el('a', {
      role: 'tab', id: 'tab-' + id, href: '#/' + id, 'aria-controls': 'view', 'aria-selected': 'false', tabindex: '-1',
    }, routes[id].label)));
    nav.addEventListener('keydown', (e) => {
      const i = tabs.indexOf((document.activeElement.id || '').replace('tab-', ''));
      if (i < 0) return;
      let j = null;
      if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
      else if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
      else if (e.key === 'Home') j = 0;
      else if (e.key === 'End') j = tabs.length - 1;
      else if (e.key === ' ' || e.key === 'Enter') j = i;
      if (j === null) return;
      e.preventDefault();
      $('tab-' + tabs[j]).focus();
      location.hash = '#/' + tabs[j];
    });
  }

  // selectTab highlights tab; a route of no tab (one proposal) none.
  function selectTab(tab) {
    for (const id of tabs) {
      const t = $('tab-' + id);
      const on = id === tab;
      t.setAttribute('aria-selected', on ? 'true' : 'false');
      t.tabIndex = on ? 0 : -1;
    }
    if (tab) $('view').setAttribute('aria-labelledby', 'tab-' + tab);
    else $('view').removeAttribute('aria-labelledby');
  }

  // ---- router and refresh -------------------------------------------------
  const ctx = { meta: null, params: {}, routes, el, api: { get: apiGet, send: apiSend, doc, loadDocs }, fmt: { fmtInt, fmtUSD, fmtPct, fmtSeconds, fmtTime } };
  let current = null; // {key, params, update, seq}
  let timer = null;
  let seq = 0;

  function currentRange() {
    return sessionStorage.getItem(RANGE_KEY) || '1h';
  }

  function navigate() {
    const m = matchRoute(location.hash) || { key: 'operations', params: {} };
    const r = routes[m.key];
    selectTab(r.tab);
    const root = $('view');
    root.replaceChildren();
    document.body.dataset.view = m.key;
    delete document.body.dataset.rendered;
    ctx.params = m.params;
    current = { key: m.key, params: m.params, update: r.mount(root, ctx), seq: ++seq };
    refresh();
  }

  async function refresh() {
    clearTimeout(timer);
    const me = current;
    try {
      const [health, data] = await Promise.all([
        doc('health').catch((e) => ({ error: e.message, status: e.status })),
        routes[me.key].load(me.params, ctx),
      ]);
      if (me !== current) return; // navigated away meanwhile
      header(health);
      const failed = [health, ...Object.values(data)].find((d) => d && d.status === 401);
      if (failed) {
        showMessage('error', token() ? 'The admin token of this tab is not accepted.' : '');
        showLogin();
        return;
      } else if (health.error) {
        showMessage('error', 'Cannot reach ' + (ctx.meta.service || 'the server') + ': ' + health.error);
      } else {
        showMessage('error', '');
      }
      me.update(data);
      setText('updated', 'updated ' + new Date().toLocaleTimeString());
      if (!document.body.dataset.loaded) document.body.dataset.firstRenderMs = String(Math.round(performance.now()));
      document.body.dataset.loaded = 'true';
      document.body.dataset.rendered = me.key;
    } catch (e) {
      showMessage('error', 'Dashboard error: ' + e.message);
    }
    if (me === current) timer = setTimeout(refresh, REFRESH_MS);
  }

  function header(h) {
    const badge = $('health-status');
    if (h && !h.error) {
      badge.textContent = h.status;
      badge.className = 'badge ' + statusClass(h.status).replace('st-', '');
      setText('version', 'version ' + h.version);
    } else {
      badge.textContent = '?';
      badge.className = 'badge';
    }
  }

  async function start() {
    $('token-save').addEventListener('click', () => {
      const t = $('token-input').value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      window.location.reload();
    });
    buildTabs();
    const range = $('range');
    range.value = currentRange();
    range.addEventListener('change', () => {
      sessionStorage.setItem(RANGE_KEY, range.value);
      refresh();
    });
    try {
      ctx.meta = await doc('meta');
    } catch (e) {
      ctx.meta = { scope: 'pod', service: 'm1', prometheus: {} };
      if (e.status === 401) {
        showMessage('error', token() ? 'The admin token of this tab is not accepted.' : '');
        showLogin();
        return;
      }
    }
    setText('service', ctx.meta.service);
    setText('scope', ctx.meta.scope === 'fleet' ? 'fleet' : 'pod');
    document.title = 'M1 — ' + ctx.meta.service + (ctx.meta.scope === 'fleet' ? ' (fleet)' : '');
    document.body.dataset.scope = ctx.meta.scope;
    if (ctx.meta.scope === 'fleet' && !ctx.meta.prometheus.configured) {
      showMessage('notice', 'Prometheus not configured (M1_PROMETHEUS_URL is unset): mesh-wide series, the pods and their revisions are not shown. Runs, proposals, approvals and cost come from the shared store; charts show this orchestrator\'s own samples.');
    }
    window.addEventListener('hashchange', navigate);
    window.addEventListener('resize', () => document.querySelectorAll('#view .panel').forEach((p) => p.resize && p.resize()));
    navigate();
  }
  start();
})();
