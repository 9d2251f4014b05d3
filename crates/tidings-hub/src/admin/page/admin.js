// The Tidings admin page: plain JavaScript, no build step, served by the hub from its binary.
//
// The admin key is kept in this tab's sessionStorage and sent as `Authorization: Bearer` to
// /admin/api/ only. Everything the hub answers (account names, activity types, descriptions:
// publisher-controlled text) reaches the page through textContent and attributes, never as
// HTML; the hub's Content-Security-Policy allows no inline script either.

const KEY_STORAGE = 'tidings-admin-key';
/** How often the page asks the hub for a snapshot. */
const POLL_MS = 1000;
/** Samples shown in each chart (the hub keeps ten minutes). */
const CHART_SAMPLES_MAX = 600;
/** Samples the rate tiles average over (ten seconds at the hub's one a second). */
const TILE_SAMPLES = 10;
/** How long a "Revoke" button waits for its confirming second click. */
const CONFIRM_MS = 4000;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  since: 0,
  samples: [],
  series: null,
  timer: null,
  /** Accounts whose sessions are unfolded, with their last answer. */
  open: new Map(),
  /** The revoke waiting for its confirming click: `{ target, until }`. */
  armed: null,
  /** What each section last showed, to leave it alone (selection, focus) when unchanged. */
  shown: new Map(),
};

/** Whether `section` would show something else than it does. */
function changed(section, data) {
  const signature = JSON.stringify(data);
  if (state.shown.get(section) === signature) return false;
  state.shown.set(section, signature);
  return true;
}

// ---------------------------------------------------------------------------------------------
// The API

class Unauthorized extends Error {}

async function api(path, body) {
  const init = { headers: { authorization: `Bearer ${state.key}` } };
  if (body !== undefined) {
    init.method = 'POST';
    init.headers['content-type'] = 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(`api/${path}`, init);
  if (r.status === 401) throw new Unauthorized('the admin key was not accepted');
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error ? `${answer.error.code}: ${answer.error.message}` : `HTTP ${r.status}`);
  return answer;
}

// ---------------------------------------------------------------------------------------------
// Signing in and out

function showSignIn(message) {
  clearTimeout(state.timer);
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $('dashboard').hidden = true;
  $('sign-out').hidden = true;
  $('node').textContent = '';
  $('sign-in').hidden = false;
  $('sign-in-error').hidden = !message;
  $('sign-in-error').textContent = message ?? '';
  $('key').focus();
}

async function signIn(key) {
  state.key = key;
  try {
    await api('overview');
  } catch (e) {
    showSignIn(e instanceof Unauthorized ? 'That is not the admin key of this hub.' : `The hub did not answer: ${e.message}`);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $('sign-in').hidden = true;
  $('dashboard').hidden = false;
  $('sign-out').hidden = false;
  state.since = 0;
  state.samples = [];
  state.shown.clear();
  poll();
}

$('sign-in-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('key').value.trim();
  $('key').value = '';
  signIn(key);
});
$('sign-out').addEventListener('click', () => showSignIn());

// ---------------------------------------------------------------------------------------------
// Polling

async function poll() {
  clearTimeout(state.timer);
  try {
    const snap = await api(`snapshot?since=${state.since}`);
    $('stale').hidden = true;
    render(snap);
  } catch (e) {
    if (e instanceof Unauthorized) {
      showSignIn('The admin key is no longer accepted (was it changed?). Sign in again.');
      return;
    }
    $('stale').hidden = false;
    $('stale').textContent = `Cannot reach the hub (${e.message}); the figures below are from the last answer.`;
  }
  state.timer = setTimeout(poll, POLL_MS);
}

function render(snap) {
  renderOverview(snap.overview);
  renderSeries(snap.series);
  if (changed('accounts', [snap.accounts, [...state.open], state.armed])) renderAccounts(snap.accounts);
  if (changed('unresolved', snap.unresolved)) renderUnresolved(snap.unresolved);
  if (changed('activities', snap.activities)) renderActivities(snap.activities.activities);
  refreshSessions();
}

// ---------------------------------------------------------------------------------------------
// Overview and tiles

function renderOverview(o) {
  const node = $('node');
  // Redis shards: which are down, by index (a node is not ready while any is).
  const shards = o.engine_shards_ready || [];
  const down = shards.flatMap((ready, i) => (ready ? [] : [i]));
  const engineDown = down.length > 0 && shards.length > 1 ? `Redis shard ${down.join(', ')} not ready` : 'engine not ready';
  node.replaceChildren(
    el('span', { class: `dot ${o.engine_ready && !o.draining ? 'ok' : 'bad'}`, title: o.draining ? 'draining' : o.engine_ready ? 'ready' : engineDown }),
    text(`v${o.version} · engine ${o.engine}${shards.length > 1 ? ` (${shards.length - down.length}/${shards.length} shards up)` : ''} · up ${duration(o.uptime_secs)} · mapping: ${o.mapping}`),
    text(o.reloads > 0 ? ` · reloaded ${o.reloads}× (last ${time(o.reloaded_at)})` : ''),
  );
  $('tile-streams').textContent = fmt(o.streams);
  $('tile-accounts').textContent = fmt(o.accounts);
  $('tile-sessions').textContent = fmt(o.sessions);
  $('tile-unresolved').textContent = fmt(o.unresolved);
}

// ---------------------------------------------------------------------------------------------
// Charts: one SVG per chart, one polyline per series, drawn from the samples the hub keeps.

const CHARTS = [
  { id: 'streams', title: 'Streams, accounts, sessions', lines: (s) => [['streams', s.streams], ['accounts', s.accounts], ['sessions', s.sessions]], rate: false },
  { id: 'publishes', title: 'Publishes/s', lines: (s) => [['published', s.published]], rate: true },
  { id: 'deliveries', title: 'Deliveries/s', lines: (s) => [['delivered', s.delivered]], rate: true },
  { id: 'resyncs', title: 'Resyncs/s by reason', lines: (s, r) => r.resync_reasons.map((name, i) => [name, s.resyncs[i]]), rate: true, sparse: true },
  { id: 'closes', title: 'Stream closes/s by reason', lines: (s, r) => r.close_reasons.map((name, i) => [name, s.closes[i]]), rate: true, sparse: true },
  { id: 'evictions', title: 'Slow-consumer evictions/s', lines: (s) => [['evicted', s.evictions]], rate: true },
  { id: 'unresolved', title: 'Unresolved activities/s', lines: (s) => [['unresolved', s.unresolved]], rate: true },
];

function renderSeries(series) {
  state.series = series;
  state.samples.push(...series.samples);
  if (state.samples.length > CHART_SAMPLES_MAX) state.samples.splice(0, state.samples.length - CHART_SAMPLES_MAX);
  if (state.samples.length) state.since = state.samples[state.samples.length - 1].at;
  const perSecond = 1000 / series.interval_ms;
  const recent = state.samples.slice(-TILE_SAMPLES);
  const rate = (field) => (recent.length ? (recent.reduce((n, s) => n + s[field], 0) / recent.length) * perSecond : NaN);
  $('tile-publishes').textContent = fmt(rate('published'));
  $('tile-deliveries').textContent = fmt(rate('delivered'));
  const charts = $('charts');
  for (const chart of CHARTS) {
    let box = charts.querySelector(`[data-chart="${chart.id}"]`);
    if (!box) {
      box = el('figure', { class: 'chart', 'data-chart': chart.id, 'data-testid': `chart-${chart.id}` });
      charts.append(box);
    }
    drawChart(box, chart, series, perSecond);
  }
}

function drawChart(box, chart, series, perSecond) {
  const samples = state.samples;
  const scale = chart.rate ? perSecond : 1;
  const named = new Map();
  samples.forEach((s, i) => {
    for (const [name, v] of chart.lines(s, series)) {
      if (!named.has(name)) named.set(name, new Array(samples.length).fill(0));
      named.get(name)[i] = v * scale;
    }
  });
  let lines = [...named.entries()];
  if (chart.sparse) lines = lines.filter(([, values]) => values.some((v) => v > 0));
  const max = Math.max(1, ...lines.flatMap(([, values]) => values));
  const [w, h] = [320, 90];
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', chart.title);
  const grid = document.createElementNS(SVG, 'path');
  grid.setAttribute('d', `M0 ${h / 2}H${w}M0 ${h - 0.5}H${w}`);
  grid.setAttribute('class', 'grid-line');
  svg.append(grid);
  const n = Math.max(samples.length, 2);
  lines.forEach(([name, values], i) => {
    const line = document.createElementNS(SVG, 'polyline');
    const points = values.map((v, x) => `${((x + (n - values.length)) / (n - 1)) * w},${h - 2 - (v / max) * (h - 6)}`);
    line.setAttribute('points', points.join(' '));
    line.setAttribute('class', `line c${i % 8}`);
    line.dataset.series = name;
    svg.append(line);
  });
  const span = samples.length > 1 ? (samples[samples.length - 1].at - samples[0].at) / 1000 : 0;
  const legend = el('figcaption', {},
    el('span', { class: 'chart-title' }, text(chart.title)),
    el('span', { class: 'muted' }, text(`last ${duration(Math.round(span))} · max ${fmt(max)}`)),
    ...lines.map(([name, values], i) => el('span', { class: `key c${i % 8}` }, text(`${name} ${fmt(values[values.length - 1] ?? 0)}`))),
    lines.length === 0 ? el('span', { class: 'muted' }, text(' none')) : text(''),
  );
  box.replaceChildren(svg, legend);
}

// ---------------------------------------------------------------------------------------------
// Accounts and their sessions

function renderAccounts(a) {
  $('accounts-caption').textContent = a.accounts > a.top.length ? `(top ${a.top.length} of ${fmt(a.accounts)} by streams)` : '';
  $('accounts-empty').hidden = a.top.length > 0;
  const rows = [];
  for (const row of a.top) {
    const unfold = el('button', { class: 'link', type: 'button', 'data-testid': 'account-sessions' }, text(state.open.has(row.account) ? 'hide sessions' : 'sessions'));
    unfold.addEventListener('click', () => {
      if (state.open.has(row.account)) state.open.delete(row.account);
      else state.open.set(row.account, null);
      state.shown.delete(`sessions:${row.account}`);
      poll();
    });
    rows.push(
      el('tr', { 'data-testid': 'account-row', 'data-account': row.account },
        el('td', { class: 'mono' }, text(row.account)),
        el('td', { class: 'num' }, text(fmt(row.streams))),
        el('td', { class: 'num' }, text(fmt(row.sessions))),
        el('td', {}, text(row.last_activity ? time(row.last_activity) : '—')),
        el('td', { class: 'actions' }, unfold, revokeButton({ account: row.account }, 'revoke all', 'revoke-account')),
      ),
    );
    if (state.open.has(row.account)) {
      const holder = el('td', { colspan: '5', class: 'sessions', 'data-sessions-of': row.account });
      rows.push(el('tr', { class: 'sub' }, holder));
      showSessions(holder, row.account, state.open.get(row.account));
    }
  }
  $('accounts').replaceChildren(...rows);
}

/** Asks for the sessions of every unfolded account, and shows them where they changed. */
async function refreshSessions() {
  for (const account of state.open.keys()) {
    let answer;
    try {
      answer = await api(`sessions?account=${encodeURIComponent(account)}`);
    } catch (e) {
      answer = { error: e.message };
    }
    if (!state.open.has(account) || !changed(`sessions:${account}`, [answer, state.armed])) continue;
    state.open.set(account, answer);
    const holder = [...document.querySelectorAll('[data-sessions-of]')].find((h) => h.dataset.sessionsOf === account);
    if (holder) showSessions(holder, account, answer);
  }
}

function showSessions(holder, account, answer) {
  if (!answer) return holder.replaceChildren(text('…'));
  if (answer.error) return holder.replaceChildren(el('span', { class: 'error' }, text(answer.error)));
  const list = el('ul', { class: 'session-list' });
  for (const s of answer.sessions) {
    list.append(
      el('li', { 'data-testid': 'session-row', 'data-session': s.session },
        el('span', { class: 'mono' }, text(s.session)),
        el('span', { class: 'muted' }, text(` ${s.credential} · stream ${s.stream} `)),
        revokeButton({ account, session: s.session }, 'revoke', 'revoke-session'),
      ),
    );
  }
  if (answer.sessions.length === 0) list.append(el('li', { class: 'muted' }, text('no stream open')));
  const more = answer.streams > answer.sessions.length ? el('p', { class: 'muted small' }, text(`${answer.sessions.length} of ${answer.streams} shown`)) : text('');
  holder.replaceChildren(list, more);
}

/** A button that asks for a second click before it revokes. The armed state lives in `state`,
 * so a redraw meanwhile keeps it. */
function revokeButton(target, label, testid) {
  const id = JSON.stringify(target);
  const armed = state.armed && state.armed.target === id && state.armed.until > Date.now();
  const b = el('button', { class: armed ? 'danger armed' : 'danger', type: 'button', 'data-testid': testid }, text(armed ? 'click again to revoke' : label));
  b.addEventListener('click', async () => {
    if (!(state.armed && state.armed.target === id && state.armed.until > Date.now())) {
      state.armed = { target: id, until: Date.now() + CONFIRM_MS };
      b.textContent = 'click again to revoke';
      b.classList.add('armed');
      setTimeout(() => {
        if (state.armed?.target === id) {
          state.armed = null;
          b.textContent = label;
          b.classList.remove('armed');
        }
      }, CONFIRM_MS);
      return;
    }
    state.armed = null;
    b.disabled = true;
    try {
      const { closed } = await api('revoke', target);
      b.textContent = `closed ${closed}`;
    } catch (e) {
      b.textContent = e.message;
    }
    setTimeout(poll, 300);
  });
  return b;
}

// ---------------------------------------------------------------------------------------------
// Unresolved types

function renderUnresolved(u) {
  $('unresolved-caption').textContent = u.other_count ? `(+${fmt(u.other_count)} of untracked types)` : '';
  $('unresolved-empty').hidden = u.types.length > 0;
  const items = u.types.map((t) => {
    const name = t.resource_type ?? '(no resource type)';
    const entry = t.mapping_entry
      ? el('div', { class: 'entry' },
          el('pre', { 'data-testid': 'mapping-entry' }, text(t.mapping_entry)),
          copyButton(t.mapping_entry))
      : el('p', { class: 'muted small' }, text('Nothing in these activities can select a mapping entry: the publisher should send resource.type.'));
    return el('article', { class: 'unresolved', 'data-testid': 'unresolved-row', 'data-type': t.resource_type ?? '' },
      el('header', {},
        el('strong', { class: 'mono' }, text(name)),
        el('span', { class: 'muted' }, text(` ${fmt(t.count)}× · first ${time(t.first_seen)} · last ${time(t.last_seen)}`))),
      entry,
      t.note ? el('p', { class: 'muted small' }, text(t.note)) : text(''),
    );
  });
  $('unresolved').replaceChildren(...items);
}

function copyButton(value) {
  const b = el('button', { class: 'link', type: 'button' }, text('copy'));
  b.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(value);
      b.textContent = 'copied';
    } catch {
      b.textContent = 'select the text to copy it';
    }
  });
  return b;
}

// ---------------------------------------------------------------------------------------------
// Recent activities

function renderActivities(list) {
  $('activities-empty').hidden = list.length > 0;
  $('activities').replaceChildren(
    ...list.map((a) => {
      const tr = el('tr', { 'data-testid': 'activity-row', 'data-id': a.id, class: a.tier ? '' : 'unresolved-row', title: 'load into the playground' },
        el('td', { class: 'nowrap' }, text(time(a.at))),
        el('td', { class: 'mono' }, text(a.account)),
        el('td', {},
          el('div', {}, text(`${a.activity_type ?? '?'} ${a.resource_type ?? '(no type)'}`)),
          el('div', { class: 'muted small' }, text(a.description ?? '')),
          el('div', { class: 'muted small' }, text(`by ${a.publisher} · ${a.id}`))),
        el('td', {}, keys(a.invalidate, 'invalidate'), keys(a.remove, 'remove')),
        el('td', { 'data-testid': 'answered-by' }, a.tier ? text(`${a.tier}: ${a.entry ?? ''}`) : el('span', { class: 'error' }, text('unresolved'))),
      );
      if (a.data) tr.addEventListener('click', () => loadPlayground(a.data, a.account));
      return tr;
    }),
  );
}

function keys(list, kind) {
  return el('div', { class: `keys ${kind}` }, ...list.map((k) => el('code', { 'data-kind': kind }, text((kind === 'remove' ? '− ' : '') + JSON.stringify(k)))));
}

// ---------------------------------------------------------------------------------------------
// Resolver playground and test activities

function loadPlayground(activity, account) {
  $('playground-input').value = JSON.stringify(activity, null, 2);
  if (account) $('playground-account').value = account;
  $('playground-input').scrollIntoView({ behavior: 'smooth', block: 'center' });
}

function playgroundActivity() {
  try {
    return JSON.parse($('playground-input').value);
  } catch (e) {
    showResult([el('p', { class: 'error' }, text(`Not JSON: ${e.message}`))]);
    return null;
  }
}

function showResult(children) {
  $('playground-result').replaceChildren(...children);
}

$('playground-resolve').addEventListener('click', async () => {
  const activity = playgroundActivity();
  if (!activity) return;
  try {
    const r = await api('resolve', activity);
    const out = [
      el('p', { 'data-testid': 'playground-tier' }, r.tier ? text(`Answered by the ${r.tier} tier, entry ${r.entry}`) : el('span', { class: 'error' }, text('No tier resolved this activity: nothing would be invalidated.'))),
      keys(r.invalidate, 'invalidate'),
      keys(r.remove, 'remove'),
    ];
    if (r.mapping_entry) out.push(el('p', {}, text('Add to the mapping:')), el('pre', { 'data-testid': 'playground-entry' }, text(r.mapping_entry)), el('p', { class: 'muted small' }, text(r.note ?? '')));
    showResult(out);
  } catch (e) {
    if (e instanceof Unauthorized) return showSignIn(e.message);
    showResult([el('p', { class: 'error' }, text(e.message))]);
  }
});

$('playground-publish').addEventListener('click', async () => {
  const activity = playgroundActivity();
  const account = $('playground-account').value.trim();
  if (!activity) return;
  if (!account) return showResult([el('p', { class: 'error' }, text('Give the account to publish to.'))]);
  const data = activity && typeof activity === 'object' && 'data' in activity && !('activity_type' in activity) ? activity.data : activity;
  try {
    const { ids } = await api('publish', { account, data });
    showResult([el('p', { 'data-testid': 'playground-published' }, text(`Published to ${account} as ${ids[0]}.`))]);
    poll();
  } catch (e) {
    if (e instanceof Unauthorized) return showSignIn(e.message);
    showResult([el('p', { class: 'error' }, text(e.message))]);
  }
});

// ---------------------------------------------------------------------------------------------
// Small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function text(s) {
  return document.createTextNode(String(s));
}

function fmt(n) {
  if (!Number.isFinite(n)) return '–';
  if (n >= 10_000) return `${(n / 1000).toFixed(n >= 100_000 ? 0 : 1)}k`;
  return Number.isInteger(n) ? n.toLocaleString('en') : n.toFixed(1);
}

/** Clock time (the date too when it is not today): absolute, so a section left unchanged
 * stays true. */
function time(rfc3339) {
  if (!rfc3339) return '—';
  const d = new Date(rfc3339);
  const clock = d.toLocaleTimeString('en-GB');
  return d.toDateString() === new Date().toDateString() ? clock : `${d.toLocaleDateString('en-CA')} ${clock}`;
}

function duration(secs) {
  if (secs < 120) return `${secs} s`;
  if (secs < 7200) return `${Math.floor(secs / 60)} min`;
  if (secs < 172_800) return `${Math.floor(secs / 3600)} h`;
  return `${Math.floor(secs / 86_400)} d`;
}

if (state.key) signIn(state.key);
else showSignIn();
