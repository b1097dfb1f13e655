// llama-orch dashboard. Hand-written, no dependencies, no build step. Every number shown comes
// from the API: the lists (/v2/nodes, /v2/pools, /v2/tasks, /v2/catalog/models) once, then the
// cluster change stream (/v2/events) keeps them current; task views follow /v2/tasks/{id}/events.
'use strict';
(() => {
  const TOKEN_KEY = 'llorch.token';
  const S = {
    nodes: new Map(), pools: new Map(), tasks: new Map(), models: new Map(),
    queues: null, commands: new Map(), poolCmd: new Map(), poolModel: new Map(),
    lastEventId: null, events: null, auth: 'open',
    // Events received while loadAll reads the lists: applied again on top of those lists, which
    // may have been read before the change (a node registering meanwhile would vanish).
    loading: null,
  };
  const main = () => document.getElementById('main');
  let current = null; // { name, update(), cleanup() }

  // ---- DOM helpers -------------------------------------------------------------------------------
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const state = (s) => h('span', { class: 'state s-' + s, text: s });
  const table = (heads, rows, label) => h('div', { class: 'scroll' },
    h('table', { 'aria-label': label },
      h('thead', {}, h('tr', {}, heads.map((c) => h('th', { scope: 'col', class: c.endsWith(' ') ? 'num' : null, text: c.trim() })))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: 'none' })))));
  const td = (v, num) => h('td', { class: num ? 'num' : null }, v);
  const bytes = (n) => {
    if (n === null || n === undefined) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0; let x = n;
    while (x >= 1024 && i < u.length - 1) { x /= 1024; i += 1; }
    return (i ? x.toFixed(1) : x) + ' ' + u[i];
  };
  const num = (x, d = 1) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
  const ago = (ms) => (ms ? Math.max(0, Math.round((Date.now() - ms) / 100) / 10).toFixed(1) + ' s' : '–');
  const short = (s, n = 8) => (s ? String(s).slice(0, n) : '–');
  const bar = (frac, label) => {
    const inner = h('span');
    inner.style.width = Math.max(0, Math.min(1, frac || 0)) * 100 + '%';
    return h('div', { class: 'bar', role: 'img', 'aria-label': label }, inner);
  };

  // ---- API -----------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, env) { super((env && env.message) || 'HTTP ' + status); this.status = status; this.env = env || {}; }
  }
  function authHeaders() {
    const t = sessionStorage.getItem(TOKEN_KEY);
    return t ? { authorization: 'Bearer ' + t } : {};
  }
  async function api(path, opts = {}) {
    const headers = authHeaders();
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(path, {
      method: opts.method || 'GET', headers, signal: opts.signal,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    const text = await r.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!r.ok) {
      const err = new ApiError(r.status, json || { message: text });
      if (r.status === 401) needToken(err.message);
      throw err;
    }
    return json;
  }

  // Server-sent events over fetch (EventSource cannot send the Authorization header).
  async function sse(path, { signal, lastId, onEvent, onOpen }) {
    const headers = authHeaders();
    if (lastId !== null && lastId !== undefined) headers['last-event-id'] = String(lastId);
    const r = await fetch(path, { headers, signal });
    if (!r.ok) {
      let env = {};
      try { env = await r.json(); } catch (_) { env = {}; }
      if (r.status === 401) needToken(env.message);
      throw new ApiError(r.status, env);
    }
    if (onOpen) onOpen();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const ev = { id: null, event: 'message', data: '' };
        let has = false;
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'id') ev.id = val;
          else if (field === 'event') ev.event = val;
          else if (field === 'data') { ev.data += (has ? '\n' : '') + val; has = true; }
        }
        if (has) onEvent(ev);
      }
    }
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const isAbort = (e) => e && e.name === 'AbortError';

  // ---- state from the API --------------------------------------------------------------------------
  async function loadAll() {
    const seen = [];
    S.loading = seen;
    let lists;
    try {
      lists = await Promise.all([
        api('/v2/nodes'), api('/v2/pools'), api('/v2/tasks?limit=1000'), api('/v2/catalog/models'),
      ]);
    } finally {
      if (S.loading === seen) S.loading = null;
    }
    const [nodes, pools, tasks, models] = lists;
    S.nodes = new Map(nodes.nodes.map((n) => [n.node_id, n]));
    S.pools = new Map(pools.pools.map((p) => [p.pool_id, p]));
    pools.pools.forEach(notePoolModel);
    S.tasks = new Map(tasks.tasks.map((t) => [t.task_id, t]));
    S.models = new Map(models.models.map((m) => [m.id, m]));
    S.queues = null;
    // In their order, so the latest state of each object wins (a gap's reset is this very load).
    seen.filter((e) => e.type !== 'reset').forEach(applyOne);
    render();
  }

  // A drained pool reports no model; a reload brings back the one it served.
  function notePoolModel(p) {
    if (p.model) S.poolModel.set(p.pool_id, p.model.id);
  }

  function apply(ev) {
    if (S.loading) S.loading.push(ev);
    applyOne(ev);
    render();
  }

  function applyOne(ev) {
    switch (ev.type) {
      case 'node': S.nodes.set(ev.node.node_id, ev.node); break;
      case 'node_removed': S.nodes.delete(ev.node_id); break;
      case 'pool': S.pools.set(ev.pool.pool_id, ev.pool); notePoolModel(ev.pool); break;
      case 'pool_removed': S.pools.delete(ev.pool_id); break;
      case 'queue': S.queues = ev.queues; break;
      case 'task':
        S.tasks.set(ev.task.task_id, ev.task);
        if (S.tasks.size > 2000) S.tasks.delete(S.tasks.keys().next().value);
        break;
      case 'catalog': S.models.set(ev.model.id, ev.model); break;
      case 'catalog_removed': S.models.delete(ev.model_id); break;
      case 'command':
        S.commands.set(ev.command.command_id, ev.command);
        if (ev.command.pool_id) S.poolCmd.set(ev.command.pool_id, ev.command.command_id);
        break;
      case 'reset':
        if (ev.reason === 'gap' && !S.loading) loadAll().catch(() => {});
        break;
      default: break;
    }
  }

  function setConn(text, cls) {
    const el = document.getElementById('conn');
    el.textContent = text;
    el.className = cls || '';
  }

  // `opened` is called once the first subscription is in place, so lists read after it miss no
  // change (a change between reading the lists and subscribing would otherwise be lost).
  async function follow(opened) {
    const ctl = new AbortController();
    S.events = ctl;
    while (!ctl.signal.aborted) {
      try {
        setConn('live', 'live');
        await sse('/v2/events', {
          signal: ctl.signal, lastId: S.lastEventId,
          onOpen: () => { if (opened) { const f = opened; opened = null; f(); } },
          onEvent: (e) => {
            if (e.id !== null && e.id !== '') S.lastEventId = e.id;
            try { apply(JSON.parse(e.data)); } catch (_) { /* a frame we do not know */ }
          },
        });
      } catch (e) {
        if (isAbort(e) || (e instanceof ApiError && e.status === 401)) return;
      }
      if (ctl.signal.aborted) return;
      setConn('reconnecting…', 'down');
      await sleep(1000);
    }
  }

  let pending = false;
  function render() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (!current) return;
      const focused = document.activeElement && document.activeElement.id;
      current.update();
      if (focused && document.activeElement !== document.getElementById(focused)) {
        const el = document.getElementById(focused);
        if (el) el.focus();
      }
    });
  }

  // ---- auth ----------------------------------------------------------------------------------------
  function needToken(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (S.events) S.events.abort();
    setConn('signed out', 'down');
    document.getElementById('main').classList.add('hidden');
    document.getElementById('login').classList.remove('hidden');
    document.getElementById('login-error').textContent = message || '';
    document.getElementById('token').focus();
  }

  async function signIn(ev) {
    ev.preventDefault();
    const t = document.getElementById('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      await api('/v2/meta/version');
    } catch (e) {
      document.getElementById('login-error').textContent = e.message;
      return;
    }
    document.getElementById('token').value = '';
    start();
  }

  async function start() {
    document.getElementById('login').classList.add('hidden');
    main().classList.remove('hidden');
    // Subscribe to the events first, then read the lists (waiting at most 3 s for the stream).
    const opened = new Promise((resolve) => follow(resolve));
    try {
      await Promise.race([opened, sleep(3000)]);
      await loadAll();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      setConn('error: ' + e.message, 'down');
    }
    route();
  }

  // ---- views ---------------------------------------------------------------------------------------
  function overview() {
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Overview' }));
    const body = h('div');
    root.append(body);
    const timer = setInterval(render, 5000);
    return {
      root, cleanup: () => clearInterval(timer),
      update() {
        const nodes = [...S.nodes.values()];
        const pools = [...S.pools.values()];
        const online = nodes.filter((n) => n.status === 'Online').length;
        const ready = pools.filter((p) => p.state === 'Ready').length;
        const total = pools.reduce((a, p) => a + p.slots_total, 0);
        const busy = pools.reduce((a, p) => a + (p.slots_total - p.slots_free), 0);
        let queues = S.queues;
        if (!queues) {
          const by = new Map();
          for (const t of S.tasks.values()) {
            if (t.state !== 'queued') continue;
            const q = by.get(t.model) || { model_id: t.model, pool_id: null, interactive: 0, batch: 0 };
            q[t.priority] += 1;
            by.set(t.model, q);
          }
          queues = [...by.values()];
        }
        const series = throughput();
        const card = (label, value, id) => h('div', { class: 'card' }, h('div', { class: 'label', text: label }), h('div', { class: 'value', id, text: value }));
        body.replaceChildren(
          h('div', { class: 'cards' },
            card('Nodes online', `${online}/${nodes.length}`, 'ov-nodes'),
            card('Pools Ready', `${ready}/${pools.length}`, 'ov-pools'),
            card('Slots busy', `${busy}/${total}`, 'ov-slots'),
            card('Queued tasks', String(queues.reduce((a, q) => a + q.interactive + q.batch, 0)), 'ov-queued'),
            h('div', { class: 'card' }, h('div', { class: 'label', text: 'Tokens/s (30 s buckets, last 10 min)' }),
              h('div', { class: 'value', text: num(series.lastTps, 1) }), chart(series.tps, 'tokens per second')),
            h('div', { class: 'card' }, h('div', { class: 'label', text: 'TTFT p50 ms (30 s buckets, last 10 min)' }),
              h('div', { class: 'value', text: series.lastTtft === null ? '–' : String(series.lastTtft) }), chart(series.ttft, 'time to first token p50'))),
          h('h3', { text: 'Queue depth per model' }),
          table(['Model', 'Pool (pinned)', 'Interactive ', 'Batch '], queues.map((q) => h('tr', {},
            td(q.model_id || '–'), td(q.pool_id || '–'), td(q.interactive, true), td(q.batch, true))), 'queue depth'));
      },
    };
  }

  // Tokens/s and TTFT p50 per 30 s bucket over the last 10 minutes, from finished task records.
  function throughput() {
    const W = 30000; const N = 20; const now = Date.now();
    const toks = new Array(N).fill(0); const ttfts = Array.from({ length: N }, () => []);
    for (const t of S.tasks.values()) {
      if (!t.finished_at_ms) continue;
      const b = N - 1 - Math.floor((now - t.finished_at_ms) / W);
      if (b < 0 || b >= N) continue;
      toks[b] += t.tokens_out;
      if (t.first_token_at_ms && t.created_at_ms) ttfts[b].push(t.first_token_at_ms - t.created_at_ms);
    }
    const tps = toks.map((x) => x / (W / 1000));
    const ttft = ttfts.map((xs) => {
      if (!xs.length) return null;
      xs.sort((a, b) => a - b);
      return xs[Math.floor((xs.length - 1) / 2)];
    });
    const lastTtft = [...ttft].reverse().find((x) => x !== null);
    const lastTps = [...tps].reverse().find((x) => x > 0);
    return { tps, ttft, lastTps: lastTps === undefined ? null : lastTps, lastTtft: lastTtft === undefined ? null : lastTtft };
  }

  function chart(values, label) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'chart');
    svg.setAttribute('viewBox', '0 0 200 60');
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
    const base = document.createElementNS(ns, 'line');
    for (const [k, v] of Object.entries({ x1: 0, y1: 59, x2: 200, y2: 59 })) base.setAttribute(k, v);
    svg.append(base);
    const max = Math.max(1, ...values.filter((v) => v !== null));
    const pts = values.map((v, i) => (v === null ? null : [(i * 200) / (values.length - 1), 58 - (v / max) * 54])).filter(Boolean);
    if (pts.length > 1) {
      const line = document.createElementNS(ns, 'polyline');
      line.setAttribute('points', pts.map((p) => p.join(',')).join(' '));
      svg.append(line);
    }
    for (const [x, y] of pts) {
      const dot = document.createElementNS(ns, 'circle');
      for (const [k, v] of Object.entries({ cx: x, cy: y, r: 2.5 })) dot.setAttribute(k, v);
      svg.append(dot);
    }
    return svg;
  }

  function nodesView() {
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Nodes' }));
    const body = h('div');
    root.append(body);
    const timer = setInterval(render, 1000);
    return {
      root, cleanup: () => clearInterval(timer),
      update() {
        const nodes = [...S.nodes.values()];
        body.replaceChildren(...(nodes.length ? nodes.map((n) => {
          const caps = n.capabilities || {};
          const names = new Map((caps.gpus || []).map((g) => [g.device_id, g.name]));
          const gpus = n.gpus || [];
          return h('div', { class: 'card', 'data-node': n.node_id },
            h('h3', {}, n.node_id, ' ', state(n.status)),
            h('div', { class: 'muted' }, `version ${n.version} · ${n.address} · heartbeat ${ago(n.last_heartbeat_ms)} ago · pools: ${n.pools.join(', ') || 'none'}`),
            h('div', {}, `CPU cores ${caps.cpu_cores ?? '–'} · RAM ${bytes(caps.ram_total_bytes)}`),
            gpus.length ? table(['GPU', 'Name', 'VRAM used', '', 'Utilization '], gpus.map((g) => {
              const used = g.vram_total_bytes - g.vram_free_bytes;
              return h('tr', {}, td(g.device_id), td(names.get(g.device_id) || '–'),
                td(`${bytes(used)} / ${bytes(g.vram_total_bytes)}`), td(bar(used / g.vram_total_bytes, `VRAM ${Math.round((100 * used) / g.vram_total_bytes)}% used`)),
                td(num(g.utilization_pct, 0) + ' %', true));
            }), 'GPUs of ' + n.node_id) : h('div', { class: 'muted', text: 'no GPUs (CPU node)' }));
        }) : [h('p', { class: 'muted', text: 'No node has registered.' })]));
      },
    };
  }

  function commandText(cmd) {
    if (!cmd) return null;
    const steps = (cmd.progress || []).map((s) => `${s.kind} ${s.status} ${num(s.pct, 0)}%`).join(', ');
    return `${cmd.kind || 'command'} ${short(cmd.command_id)}: ${cmd.status}${steps ? ' · ' + steps : ''}${cmd.error ? ' · ' + cmd.error.message : ''}`;
  }
  const cmdBusy = (cmd) => cmd && (cmd.status === 'accepted' || cmd.status === 'running');

  async function poolAction(p, kind) {
    const model = (p.model && p.model.id) || S.poolModel.get(p.pool_id);
    const what = kind === 'drain' ? `Drain pool ${p.pool_id}? Running tasks finish; nothing new is placed there.`
      : `Reload pool ${p.pool_id} with ${model}?`;
    if (!window.confirm(what)) return;
    const out = document.getElementById('pool-msg');
    try {
      const r = await api(`/v2/pools/${encodeURIComponent(p.pool_id)}/${kind}`, { method: 'POST', body: kind === 'drain' ? {} : { model_ref: model } });
      if (!S.commands.has(r.command_id)) {
        S.commands.set(r.command_id, { command_id: r.command_id, kind, pool_id: p.pool_id, node_id: p.node_id, status: 'accepted', progress: [] });
      }
      S.poolCmd.set(p.pool_id, r.command_id);
      out.textContent = `${kind} of ${p.pool_id} accepted (command ${r.command_id})`;
      render();
    } catch (e) {
      out.textContent = `${kind} of ${p.pool_id} failed: ${e.message}`;
    }
  }

  function poolsView() {
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Pools' }),
      h('p', { id: 'pool-msg', role: 'status', 'aria-live': 'polite', class: 'muted' }));
    const body = h('div');
    root.append(body);
    return {
      root, cleanup() {},
      update() {
        const rows = [];
        for (const p of S.pools.values()) {
          const cmd = S.commands.get(S.poolCmd.get(p.pool_id));
          const busy = cmdBusy(cmd);
          rows.push(h('tr', { 'data-pool': p.pool_id },
            td(h('strong', { text: p.pool_id })), td(p.node_id), td(h('span', { class: 'pool-state' }, state(p.state))),
            td(p.model ? p.model.id : '–'), td(p.engine_version || '–'),
            td(`${p.slots_total - p.slots_free}/${p.slots_total}`, true), td(p.queued, true),
            td(num(p.decode_tokens_per_s, 1), true),
            td(h('div', { class: 'row' },
              h('button', { id: 'drain-' + p.pool_id, type: 'button', disabled: busy || p.state !== 'Ready', onclick: () => poolAction(p, 'drain') }, 'Drain'),
              h('button', { id: 'reload-' + p.pool_id, type: 'button', disabled: busy || !S.poolModel.has(p.pool_id), onclick: () => poolAction(p, 'reload') }, 'Reload')))));
          if (cmd || p.last_error) {
            rows.push(h('tr', {}, h('td', { colspan: 9 },
              cmd ? h('div', { class: 'pool-cmd', 'aria-live': 'polite' }, commandText(cmd)) : null,
              p.last_error ? h('details', { open: p.state === 'Failed' }, h('summary', { text: 'Last error and engine log' }), h('pre', { text: p.last_error })) : null)));
          }
        }
        body.replaceChildren(table(['Pool', 'Node', 'State', 'Model', 'Engine', 'Slots busy ', 'Queued ', 'Decode tok/s ', 'Actions'], rows, 'pools'));
      },
    };
  }

  function tasksView() {
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Tasks' }));
    const body = h('div');
    root.append(body);
    const link = (t) => h('a', { href: '#/task/' + t.task_id, class: 'mono' }, short(t.task_id));
    return {
      root, cleanup() {},
      update() {
        const all = [...S.tasks.values()].sort((a, b) => (b.created_at_ms || 0) - (a.created_at_ms || 0));
        const queued = all.filter((t) => t.state === 'queued').sort((a, b) => (a.queue_position ?? 0) - (b.queue_position ?? 0));
        const running = all.filter((t) => t.state === 'running');
        const done = all.filter((t) => t.state !== 'queued' && t.state !== 'running').slice(0, 50);
        body.replaceChildren(
          h('h3', { text: `Queued (${queued.length})` }),
          table(['Task', 'Model', 'Priority', 'Position ', 'Predicted start ms '], queued.map((t) => h('tr', {},
            td(link(t)), td(t.model), td(t.priority), td(t.queue_position ?? '–', true), td(t.predicted_start_ms ?? '–', true))), 'queued tasks'),
          h('h3', { text: `Running (${running.length})` }),
          table(['Task', 'Model', 'Pool', 'Tokens in ', 'Tokens out ', 'Started'], running.map((t) => h('tr', { 'data-task': t.task_id },
            td(link(t)), td(t.model), td(t.pool_id || '–'), td(t.tokens_in, true), td(t.tokens_out, true), td(ago(t.started_at_ms) + ' ago'))), 'running tasks'),
          h('h3', { text: 'Finished (latest 50)' }),
          table(['Task', 'Model', 'State', 'Tokens out ', 'TTFT ms ', 'Stop reason'], done.map((t) => h('tr', {},
            td(link(t)), td(t.model), td(state(t.state)), td(t.tokens_out, true),
            td(t.first_token_at_ms && t.created_at_ms ? t.first_token_at_ms - t.created_at_ms : '–', true),
            td(t.stop_reason || (t.error ? t.error.code : '–')))), 'finished tasks'));
      },
    };
  }

  function taskView(id) {
    const ctl = new AbortController();
    const head = h('div');
    const text = h('pre', { id: 'task-text', 'aria-label': 'generated text' });
    const rows = h('tbody');
    const opened = performance.now();
    const cancelBtn = h('button', { id: 'task-cancel', type: 'button', class: 'danger', onclick: cancel }, 'Cancel task');
    const msg = h('p', { id: 'task-msg', role: 'status', 'aria-live': 'polite', class: 'muted' });
    const root = h('section', { 'aria-labelledby': 'v-title' },
      h('h2', { id: 'v-title' }, 'Task ', h('span', { class: 'mono', text: id })),
      head, h('div', { class: 'row' }, cancelBtn), msg,
      h('h3', { text: 'Output' }), text,
      h('h3', { text: 'Stream frames' }),
      h('div', { class: 'scroll' }, h('table', { 'aria-label': 'stream frames' },
        h('thead', {}, h('tr', {}, h('th', { class: 'num', text: 'id' }), h('th', { text: 'event' }), h('th', { class: 'num', text: 'received +ms' }), h('th', { text: 'data' }))), rows)));
    async function cancel() {
      if (!window.confirm(`Cancel task ${id}?`)) return;
      try {
        await api(`/v2/tasks/${id}/cancel`, { method: 'POST' });
        msg.textContent = 'cancel requested';
      } catch (e) { msg.textContent = 'cancel failed: ' + e.message; }
    }
    (async () => {
      try {
        const rec = await api('/v2/tasks/' + id, { signal: ctl.signal });
        if (!S.tasks.has(id)) S.tasks.set(id, rec);
        render();
        // observe=true: watching here does not make the task one that a disconnect cancels.
        await sse(`/v2/tasks/${id}/events?verbose=true&observe=true`, {
          signal: ctl.signal,
          onEvent: (e) => {
            let d = null;
            try { d = JSON.parse(e.data); } catch (_) { d = null; }
            if (e.event === 'token' && d) text.textContent += d.t;
            rows.append(h('tr', { class: 'frame-' + e.event }, h('td', { class: 'num', text: e.id ?? '' }), h('td', { text: e.event }),
              h('td', { class: 'num', text: String(Math.round(performance.now() - opened)) }), h('td', { class: 'mono', text: e.data.length > 300 ? e.data.slice(0, 300) + '…' : e.data })));
          },
        });
        msg.textContent = 'stream ended';
      } catch (e) {
        if (!isAbort(e)) msg.textContent = 'error: ' + e.message;
      }
    })();
    return {
      root, cleanup: () => ctl.abort(),
      update() {
        const t = S.tasks.get(id);
        if (!t) return;
        cancelBtn.disabled = t.state !== 'queued' && t.state !== 'running';
        head.replaceChildren(h('div', { class: 'cards facts' },
          ...[['State', state(t.state)], ['Model', t.model], ['Pool', t.pool_id || '–'], ['Tokens in', t.tokens_in], ['Tokens out', t.tokens_out],
            ['Queue position', t.queue_position ?? '–'], ['TTFT ms', t.first_token_at_ms && t.created_at_ms ? t.first_token_at_ms - t.created_at_ms : '–'],
            ['Stop reason', t.stop_reason || (t.error ? t.error.code : '–')]]
            .map(([l, v]) => h('div', { class: 'card' }, h('div', { class: 'label', text: l }), h('div', { class: 'value task-' + l.toLowerCase().replace(/ /g, '-') }, v)))));
      },
    };
  }

  function modelsView() {
    const msg = h('p', { id: 'model-msg', role: 'status', 'aria-live': 'polite', class: 'muted' });
    const refIn = h('input', { id: 'model-ref', name: 'ref', required: true, placeholder: 'hf:org/repo/file.gguf or file:/path', size: 40 });
    const idIn = h('input', { id: 'model-id', name: 'id', placeholder: 'derived from the ref' });
    const form = h('form', { class: 'row', 'aria-label': 'add a model', onsubmit: add },
      h('label', { for: 'model-ref' }, 'Reference', refIn), h('label', { for: 'model-id' }, 'Id (optional)', idIn),
      h('button', { type: 'submit', class: 'primary' }, 'Add model'));
    const body = h('div');
    const cmds = h('div');
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Models' }), form, msg, body,
      h('h3', { text: 'Commands (preparation, verification, pool operations)' }), cmds);
    async function add(ev) {
      ev.preventDefault();
      const req = { ref: refIn.value.trim() };
      if (idIn.value.trim()) req.id = idIn.value.trim();
      try {
        const rec = await api('/v2/catalog/models', { method: 'POST', body: req });
        S.models.set(rec.id, rec);
        msg.textContent = `added ${rec.id}; it is fetched and prepared when a pool loads it`;
        refIn.value = ''; idIn.value = '';
        render();
      } catch (e) { msg.textContent = 'add failed: ' + e.message; }
    }
    async function act(m, what) {
      const id = encodeURIComponent(m.id);
      try {
        if (what === 'verify') await api(`/v2/catalog/models/${id}/verify`, { method: 'POST' });
        else if (what === 'remove') {
          if (!window.confirm(`Remove ${m.id} from the catalog and the nodes' caches?`)) return;
          await api(`/v2/catalog/models/${id}`, { method: 'DELETE' });
        } else await api(`/v2/catalog/models/${id}/state`, { method: 'POST', body: { state: what } });
        msg.textContent = `${what} ${m.id}: accepted`;
      } catch (e) { msg.textContent = `${what} ${m.id} failed: ${e.message}`; }
    }
    return {
      root, cleanup() {},
      update() {
        body.replaceChildren(table(['Model', 'Ref', 'State', 'Size ', 'Digest', 'GGUF', 'Nodes', 'Actions'], [...S.models.values()].map((m) => {
          const g = m.metadata || {};
          const facts = [g.architecture, g.parameter_count ? (g.parameter_count / 1e6).toFixed(0) + 'M params' : null, g.quantization, g.context_length ? 'ctx ' + g.context_length : null].filter(Boolean).join(' · ');
          const key = m.id.replace(/[^A-Za-z0-9_-]/g, '_');
          return h('tr', { 'data-model': m.id }, td(h('strong', { text: m.id })), td(h('span', { class: 'mono', text: m.ref })), td(state(m.state)),
            td(bytes(m.size_bytes), true), td(h('span', { class: 'mono', title: m.digest || '' }, m.digest ? short(m.digest, 15) : '–')), td(facts || '–'),
            td(m.locations.join(', ') || '–'),
            td(h('div', { class: 'row' },
              h('button', { id: 'verify-' + key, type: 'button', onclick: () => act(m, 'verify') }, 'Verify'),
              m.state === 'Active' ? h('button', { id: 'retire-' + key, type: 'button', onclick: () => act(m, 'Retired') }, 'Retire')
                : h('button', { id: 'activate-' + key, type: 'button', onclick: () => act(m, 'Active') }, 'Activate'),
              h('button', { id: 'remove-' + key, type: 'button', class: 'danger', onclick: () => act(m, 'remove') }, 'Remove'))));
        }), 'catalog'));
        const list = [...S.commands.values()].slice(-15).reverse();
        cmds.replaceChildren(table(['Command', 'Kind', 'Node', 'Pool', 'Status', 'Progress'], list.map((c) => h('tr', {},
          td(h('span', { class: 'mono', text: short(c.command_id) })), td(c.kind || '–'), td(c.node_id || '–'), td(c.pool_id || '–'), td(state(c.status)),
          td((c.progress || []).map((s) => h('div', {}, `${s.kind} ${s.status} ${num(s.pct, 0)}% (${bytes(s.bytes_done)} / ${bytes(s.bytes_total)})`,
            bar(s.pct / 100, `${s.kind} ${num(s.pct, 0)} percent`))).concat(c.error ? [h('div', { class: 'error', text: c.error.message })] : [])))), 'commands'));
      },
    };
  }

  function playground() {
    const history = [];
    let live = null; // { id, ctl }
    let lastReq = null;
    const model = h('select', { id: 'pg-model', name: 'model' });
    const maxTok = h('input', { id: 'pg-max', type: 'number', min: 1, max: 8192, value: 256 });
    const system = h('textarea', { id: 'pg-system', rows: 2, placeholder: 'optional' });
    const input = h('textarea', { id: 'pg-input', rows: 3, placeholder: 'Say something (Ctrl+Enter sends)' });
    const send = h('button', { id: 'pg-send', type: 'submit', class: 'primary' }, 'Send');
    const stop = h('button', { id: 'pg-stop', type: 'button', disabled: true, onclick: stopTask }, 'Stop');
    const chat = h('div', { id: 'chat', 'aria-live': 'polite', 'aria-label': 'conversation' });
    const stats = h('p', { id: 'pg-stats', role: 'status', class: 'muted' });
    const snippet = h('pre', { id: 'pg-snippet', class: 'hidden', 'aria-label': 'code snippet' });
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });
    const form = h('form', { 'aria-label': 'chat', onsubmit: submit },
      h('div', { class: 'row' }, h('label', { for: 'pg-model' }, 'Model', model), h('label', { for: 'pg-max' }, 'Max tokens', maxTok)),
      h('label', { for: 'pg-system' }, 'System prompt', system),
      chat,
      h('label', { for: 'pg-input' }, 'Message', input),
      h('div', { class: 'row' }, send, stop,
        h('button', { id: 'pg-curl', type: 'button', onclick: () => show('curl') }, 'as curl'),
        h('button', { id: 'pg-python', type: 'button', onclick: () => show('python') }, 'as Python (openai)'),
        h('button', { id: 'pg-clear', type: 'button', onclick: () => { history.length = 0; chat.replaceChildren(); } }, 'Clear')));
    const root = h('section', { 'aria-labelledby': 'v-title' }, h('h2', { id: 'v-title', text: 'Playground' }), form, stats, snippet);

    function request(withInput) {
      const messages = [];
      if (system.value.trim()) messages.push({ role: 'system', content: system.value.trim() });
      messages.push(...history);
      if (withInput) messages.push({ role: 'user', content: input.value });
      return { model_ref: model.value, messages, max_tokens: Number(maxTok.value) || 256 };
    }
    function show(kind) {
      const req = lastReq || request(true);
      const base = location.origin;
      const auth = S.auth === 'token' ? ' \\\n  -H "Authorization: Bearer $LLORCH_TOKEN"' : '';
      snippet.textContent = kind === 'curl'
        ? `# Submit, then follow the task's event stream.\ncurl -sS ${base}/v2/tasks${auth} \\\n  -H 'Content-Type: application/json' \\\n  -d '${JSON.stringify(req).replace(/'/g, "'\\''")}'\n` +
          `curl -N ${base}/v2/tasks/<task_id>/events${auth}`
        : `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key=os.environ.get("LLORCH_TOKEN", "none"))\n` +
          `stream = client.chat.completions.create(\n    model=${JSON.stringify(req.model_ref)},\n    messages=${JSON.stringify(req.messages)},\n    max_tokens=${req.max_tokens},\n    stream=True,\n)\n` +
          'for chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)\n';
      snippet.classList.remove('hidden');
    }
    async function stopTask() {
      if (!live) return;
      try { await api(`/v2/tasks/${live.id}/cancel`, { method: 'POST' }); } catch (e) { stats.textContent = 'stop failed: ' + e.message; }
    }
    async function submit(ev) {
      ev.preventDefault();
      if (live || !input.value.trim() || !model.value) return;
      const req = request(true);
      lastReq = req;
      const user = input.value;
      chat.append(h('div', { class: 'msg user' }, h('span', { class: 'who', text: 'you' }), user));
      const out = h('span', { class: 'text' });
      const bubble = h('div', { class: 'msg assistant' }, h('span', { class: 'who', text: model.value }), out);
      chat.append(bubble);
      input.value = '';
      send.disabled = true; stop.disabled = false;
      stats.textContent = 'submitting…';
      const ctl = new AbortController();
      try {
        const adm = await api('/v2/tasks', { method: 'POST', body: req });
        live = { id: adm.task_id, ctl };
        bubble.dataset.task = adm.task_id;
        stats.textContent = `queued at position ${adm.queue_position}, predicted start ${adm.predicted_start_ms} ms`;
        let ended = null;
        await sse(`/v2/tasks/${adm.task_id}/events`, {
          signal: ctl.signal,
          onEvent: (e) => {
            const d = JSON.parse(e.data);
            if (e.event === 'started') stats.textContent = `running on ${d.pool_id} (${d.engine_version || d.engine})`;
            else if (e.event === 'token') out.textContent += d.t;
            else if (e.event === 'metrics' && d.decode_tokens_per_s) stats.textContent = `decoding at ${num(d.decode_tokens_per_s, 1)} tok/s`;
            else if (e.event === 'end') ended = d;
            else if (e.event === 'error') stats.textContent = `error ${d.code}: ${d.message}`;
          },
        });
        if (ended) {
          const tps = ended.decode_time_ms > 0 ? (ended.tokens_out * 1000) / ended.decode_time_ms : null;
          stats.textContent = `TTFT ${ended.ttft_ms ?? '–'} ms · ${num(tps, 1)} tok/s · ${ended.tokens_in} tokens in, ${ended.tokens_out} out · ${ended.stop_reason}`;
          history.push({ role: 'user', content: user }, { role: 'assistant', content: out.textContent });
        }
      } catch (e) {
        if (!isAbort(e)) stats.textContent = 'error: ' + e.message;
      } finally {
        live = null;
        send.disabled = false; stop.disabled = true;
      }
    }
    return {
      root, cleanup: () => { if (live) live.ctl.abort(); },
      update() {
        const ids = [...new Set([...S.models.values()].filter((m) => m.state === 'Active').map((m) => m.id)
          .concat([...S.pools.values()].filter((p) => p.model).map((p) => p.model.id)))].sort();
        const have = [...model.options].map((o) => o.value);
        if (ids.join('\n') === have.join('\n')) return;
        const keep = model.value;
        model.replaceChildren(...ids.map((id) => h('option', { value: id, text: id })));
        if (ids.includes(keep)) model.value = keep;
      },
    };
  }

  const VIEWS = { overview, nodes: nodesView, pools: poolsView, tasks: tasksView, models: modelsView, playground };

  function route() {
    if (main().classList.contains('hidden')) return;
    const [, name = 'overview', arg] = (location.hash || '#/overview').split('/');
    if (current) current.cleanup();
    const make = name === 'task' && arg ? () => taskView(decodeURIComponent(arg)) : VIEWS[name] || overview;
    current = make();
    current.update();
    main().replaceChildren(current.root);
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.view === (name === 'task' ? 'tasks' : name)) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `llama-orch · ${name}`;
  }

  async function boot() {
    window.addEventListener('hashchange', route);
    document.getElementById('login-form').addEventListener('submit', signIn);
    let cfg = { auth: 'token' };
    try { cfg = await (await fetch('/ui/config.json')).json(); } catch (_) { /* ask for a token */ }
    S.auth = cfg.auth;
    if (cfg.auth === 'token' && !sessionStorage.getItem(TOKEN_KEY)) {
      needToken('');
      return;
    }
    start();
  }
  boot();
})();
