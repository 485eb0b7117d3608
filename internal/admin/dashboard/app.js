// M1 dashboard (m1-authz and m1-orchestrator). Reads the admin token from
// the URL once (or asks for it), keeps it in sessionStorage, takes it out
// of the address bar, and polls the JSON API with Authorization: Bearer.
// #/proposals/<id> shows one proposal (where an MCP client's URL
// elicitation points). Every string from the API is rendered with
// textContent: agents choose some of them (names, goals, arguments).
'use strict';

(function () {
  const TOKEN_KEY = 'm1-admin-token';
  const REFRESH_MS = 3000;
  const SAMPLES = 120; // points kept for the charts

  const url = new URL(window.location.href);
  if (url.searchParams.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, url.searchParams.get('token'));
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || '';

  const $ = (id) => document.getElementById(id);

  // Without a token (a proposal's link opened in a new tab) the page asks
  // for one; it is kept in this tab's sessionStorage only.
  function showLogin() {
    $('login').hidden = false;
    $('main').hidden = true;
    $('proposal-view').hidden = true;
  }
  $('token-save').addEventListener('click', () => {
    const t = $('token-input').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    window.location.reload();
  });

  function setText(id, text) {
    $(id).textContent = text;
  }

  function showError(id, msg) {
    const el = $(id);
    el.textContent = msg || '';
    el.hidden = !msg;
  }

  // cell makes a table cell holding text (never markup).
  function cell(text, cls) {
    const td = document.createElement('td');
    td.textContent = text === undefined || text === null ? '' : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function fillRows(id, rows) {
    const body = $(id);
    body.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement('tr');
      tr.append(...cells);
      return tr;
    }));
  }

  const fmtInt = (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US'));
  const fmtUSD = (n) => (Number(n) || 0).toFixed(4);
  const fmtPct = (x) => (x === null || x === undefined ? '–' : (100 * x).toFixed(1) + ' %');
  const fmtTime = (s) => (s ? new Date(s).toLocaleString() : '');
  function fmtSeconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 1e-3) return (s * 1e6).toFixed(0) + ' µs';
    if (s < 1) return (s * 1e3).toFixed(1) + ' ms';
    return s.toFixed(2) + ' s';
  }
  // statusClass gives a CSS class for a known status word, else none.
  const statusClass = (s) => (/^[a-z_]+$/.test(s) ? 'st-' + s : '');

  async function api(name, query) {
    const resp = await fetch('api/m1/dashboard/' + name + (query || ''), {
      headers: { Authorization: 'Bearer ' + token },
      cache: 'no-store',
    });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      throw new Error(name + ': HTTP ' + resp.status);
    }
    if (!resp.ok) {
      const err = new Error((body && body.reason) || 'HTTP ' + resp.status);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function renderHealth(h) {
    const badge = $('health-status');
    badge.textContent = h.status;
    badge.className = 'badge ' + statusClass(h.status).replace('st-', '');
    setText('version', 'version ' + h.version);
    const names = Object.keys(h.checks || {}).sort();
    fillRows('health-checks', names.map((n) => {
      const c = h.checks[n];
      return [cell(n), cell(c.status, statusClass(c.status)), cell(c.detail || '')];
    }));
    const db = (h.checks || {}).database || {};
    const info = db.info || {};
    if (db.status === 'disabled') {
      setText('audit-queue', 'off');
      setText('audit-detail', db.detail || '');
    } else {
      setText('audit-queue', fmtInt(info.queue_depth) + ' queued');
      setText('audit-detail', fmtInt(info.written) + ' written · ' + fmtInt(info.spool_events) +
        ' spooled (' + fmtInt(info.spool_bytes) + ' B) · ' + (info.backend || ''));
    }
  }

  function renderMetrics(m) {
    setText('allow-total', fmtInt(m.checks.allow));
    setText('deny-total', fmtInt(m.checks.deny));
    fillRows('decisions', m.checks.by_reason.map((r) => [
      cell(r.decision, statusClass(r.decision)), cell(r.reason), cell(fmtInt(r.count), 'num'),
    ]));
    const hits = m.cache.hits || {};
    setText('cache-hit-rate', fmtPct(m.cache.hit_rate));
    setText('cache-detail', Object.keys(hits).sort().map((t) => t + ' ' + fmtInt(hits[t])).join(' · ') +
      ' · misses ' + fmtInt(m.cache.misses));
    const l = m.check_latency;
    setText('latency-p50', 'p50 ' + fmtSeconds(l.p50_seconds));
    setText('latency-detail', 'p99 ' + fmtSeconds(l.p99_seconds) + ' · mean ' + fmtSeconds(l.mean_seconds) +
      ' · ' + fmtInt(l.count) + ' checks');
    const tv = m.token_verifications || {};
    setText('token-verifications', Object.keys(tv).sort().map((k) => k + ' ' + fmtInt(tv[k])).join(' · ') || '–');
    sample(m);
  }

  function renderPolicy(p) {
    setText('policy-revision', p.revision);
    setText('policy-cache', p.decision_cache ? 'on' : 'off (' + p.cache_off_reason + ')');
    const tools = p.tools || {};
    fillRows('policy-tools', Object.keys(tools).sort().map((name) => [
      cell(name), cell(tools[name].risk), cell(tools[name].requires_approval ? 'yes' : 'no'),
    ]));
  }

  // fmtAge is a duration in seconds, rounded for people: 42 s, 7 min, 3 h.
  function fmtAge(s) {
    if (s === null || s === undefined) return '–';
    if (s < 120) return Math.floor(s) + ' s';
    if (s < 7200) return Math.floor(s / 60) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  // origin says where a proposal came from, as text.
  function origin(p) {
    if (p.origin === 'sidecar') {
      return 'sidecar ' + (p.sidecar || '?') + (p.pod ? ' (pod ' + p.pod + ')' : '');
    }
    return 'run ' + (p.run_id || '');
  }

  // proposalLink is a link to a proposal's page; the id is text.
  function proposalLink(id) {
    const a = document.createElement('a');
    a.href = '#/proposals/' + encodeURIComponent(id);
    a.textContent = id;
    const td = document.createElement('td');
    td.append(a);
    return td;
  }

  function renderPending(doc) {
    showError('pending-error', '');
    setText('pending-total', fmtInt(doc.total));
    setText('pending-oldest', doc.total ? fmtAge(doc.oldest_age_seconds) : '–');
    fillRows('pending', doc.pending.map((p) => [
      cell(fmtTime(p.created_at)), cell(fmtAge(p.age_seconds), 'num'), cell(p.agent), cell(p.tool),
      cell(p.risk, statusClass(p.risk)), cell(origin(p)), proposalLink(p.id),
    ]));
  }

  // The proposal page, #/proposals/<id>: where an MCP client's URL
  // elicitation points the person a call waits for.
  const PROPOSAL_ROUTE = /^#\/proposals\/([A-Za-z0-9_.-]{1,128})$/;

  function routedProposal() {
    const m = PROPOSAL_ROUTE.exec(window.location.hash);
    return m ? m[1] : '';
  }

  function renderProposal(p) {
    showError('pv-error', '');
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
    setText('pv-age', '(' + fmtAge(p.age_seconds) + ' ago)');
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
    showError('pv-warning', p.args_error ? 'Do not approve: ' + p.args_error : '');
    setText('pv-approve', p.approvable ? p.approve_command : '(not pending: nothing to approve)');
    setText('pv-reject', p.status === 'pending' ? p.reject_command : '');
  }

  async function refreshProposal(id) {
    try {
      renderProposal(await api('proposals/' + encodeURIComponent(id)));
    } catch (e) {
      if (e.status === 401) {
        showLogin();
        return;
      }
      setText('pv-id', id);
      showError('pv-error', e.status === 404 ? 'No such proposal.' : 'Cannot load the proposal: ' + e.message);
    }
    document.body.dataset.loaded = 'true';
  }

  function route() {
    if (!token) {
      showLogin();
      return;
    }
    const id = routedProposal();
    $('proposal-view').hidden = !id;
    $('main').hidden = !!id;
    if (id) refreshProposal(id);
  }
  window.addEventListener('hashchange', route);

  function renderRuns(doc) {
    showError('runs-error', '');
    fillRows('runs', doc.runs.map((r) => [
      cell(fmtTime(r.created_at)), cell(r.agent), cell(r.goal, 'goal'), cell(r.status, statusClass(r.status)),
      cell(fmtUSD(r.usage && r.usage.cost_usd), 'num'), cell(fmtTime(r.updated_at)),
    ]));
  }

  function renderCosts(doc) {
    showError('costs-error', '');
    fillRows('costs', doc.rows.map((r) => [
      cell(r.agent), cell(r.model), cell(fmtInt(r.calls), 'num'), cell(fmtInt(r.usage.input_tokens), 'num'),
      cell(fmtInt(r.usage.output_tokens), 'num'), cell(fmtUSD(r.usage.cost_usd), 'num'),
    ]));
    setText('costs-calls', fmtInt(doc.total.calls));
    setText('costs-total', fmtUSD(doc.total.usage.cost_usd));
  }

  // Charts: rates come from successive samples of the counters.
  const series = { t: [], allow: [], deny: [], p50: [], p99: [] };
  let last = null;
  let rateChart = null;
  let latencyChart = null;

  function sample(m) {
    const now = Date.now() / 1000;
    if (last && now > last.t) {
      const dt = now - last.t;
      push('t', now);
      push('allow', Math.max(0, m.checks.allow - last.allow) / dt);
      push('deny', Math.max(0, m.checks.deny - last.deny) / dt);
      const l = m.check_latency;
      push('p50', l.p50_seconds === null ? null : l.p50_seconds * 1e6);
      push('p99', l.p99_seconds === null ? null : l.p99_seconds * 1e6);
      drawCharts();
    }
    last = { t: now, allow: m.checks.allow, deny: m.checks.deny };
  }

  function push(k, v) {
    series[k].push(v);
    if (series[k].length > SAMPLES) series[k].shift();
  }

  function chartSize(id) {
    return { width: Math.max(300, $(id).clientWidth), height: 200 };
  }

  function drawCharts() {
    if (typeof uPlot === 'undefined') return;
    const rate = [series.t, series.allow, series.deny];
    const lat = [series.t, series.p50, series.p99];
    if (!rateChart) {
      rateChart = new uPlot(Object.assign(chartSize('chart-rate'), {
        series: [{}, { label: 'allow/s', stroke: '#15803d' }, { label: 'deny/s', stroke: '#b91c1c' }],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      }), rate, $('chart-rate'));
      latencyChart = new uPlot(Object.assign(chartSize('chart-latency'), {
        series: [{}, { label: 'p50 µs', stroke: '#2563eb' }, { label: 'p99 µs', stroke: '#9333ea' }],
        scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      }), lat, $('chart-latency'));
      window.addEventListener('resize', () => {
        rateChart.setSize(chartSize('chart-rate'));
        latencyChart.setSize(chartSize('chart-latency'));
      });
      return;
    }
    rateChart.setData(rate);
    latencyChart.setData(lat);
  }

  async function refresh() {
    if (!token) return;
    const id = routedProposal();
    if (id) {
      await refreshProposal(id);
      return;
    }
    const [health, metrics, policy, runs, costs, pending] = await Promise.allSettled([
      api('health'), api('metrics'), api('policy'), api('runs'), api('costs'), api('proposals'),
    ]);
    const failed = [health, metrics, policy].find((r) => r.status === 'rejected');
    if (failed && failed.reason.status === 401) {
      showError('error', 'The admin token is wrong: enter the right one, or open the dashboard URL logged at start (…/?token=…).');
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin();
    } else if (failed) {
      showError('error', 'Cannot reach m1-authz: ' + failed.reason.message);
    } else {
      showError('error', '');
    }
    if (health.status === 'fulfilled') renderHealth(health.value);
    if (metrics.status === 'fulfilled') renderMetrics(metrics.value);
    if (policy.status === 'fulfilled') renderPolicy(policy.value);
    if (runs.status === 'fulfilled') renderRuns(runs.value);
    else showError('runs-error', runs.reason.message);
    if (costs.status === 'fulfilled') renderCosts(costs.value);
    else showError('costs-error', costs.reason.message);
    if (pending.status === 'fulfilled') renderPending(pending.value);
    else showError('pending-error', pending.reason.message);
    setText('updated', 'updated ' + new Date().toLocaleTimeString());
    document.body.dataset.loaded = 'true';
  }

  async function loop() {
    try {
      await refresh();
    } catch (e) {
      showError('error', 'Dashboard error: ' + e.message);
    }
    if ($('login').hidden) setTimeout(loop, REFRESH_MS);
  }
  route();
  loop();
})();
