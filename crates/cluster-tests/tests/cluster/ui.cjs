// The dashboard scenario in headless Chromium, driven by playwright-core (run by ui.rs).
// Env: UI_BASE (orchestratord URL), UI_TOKEN (a client token; auth is on), UI_MODEL, UI_POOL, UI_OUT
// (screenshot folder), UI_CHROMIUM (the browser). Prints one JSON summary line prefixed "SUMMARY ";
// ui.rs checks it. Every wait is bounded; any failure exits non-zero with the reason.
'use strict';
const { chromium } = require('playwright-core');

const base = process.env.UI_BASE;
const token = process.env.UI_TOKEN;
const model = process.env.UI_MODEL;
const pool = process.env.UI_POOL;
const out = process.env.UI_OUT;
const headers = { authorization: 'Bearer ' + token, 'content-type': 'application/json' };
const summary = { console_errors: [], screenshots: [], unlabelled: [] };
const step = (s) => console.log('[ui] ' + s);

async function api(path, body) {
  const r = await fetch(base + path, body === undefined ? { headers } : { method: 'POST', headers, body: JSON.stringify(body) });
  const text = await r.text();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function shot(page, name) {
  // Every control on the view has an accessible name (a label, aria-label or its text).
  const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button, a')]
    .filter((el) => el.offsetParent !== null)
    .filter((el) => !((el.labels && el.labels.length) || el.getAttribute('aria-label') || el.textContent.trim()))
    .map((el) => el.id || el.outerHTML.slice(0, 60)));
  if (unnamed.length) summary.unlabelled.push({ view: name, controls: unnamed });
  const path = `${out}/${name}.png`;
  await page.screenshot({ path, fullPage: true });
  summary.screenshots.push(path);
}

async function until(what, timeoutMs, f) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The states a pool's row shows, recorded by a MutationObserver so that a state held only for a
// moment is still seen.
async function recordPoolStates(page, pool) {
  await page.evaluate((pool) => {
    window.__states = [];
    const note = () => {
      const el = document.querySelector(`tr[data-pool="${pool}"] .pool-state`);
      const s = el && el.textContent;
      if (s && window.__states[window.__states.length - 1] !== s) window.__states.push(s);
    };
    note();
    new MutationObserver(note).observe(document.getElementById('main'), { subtree: true, childList: true, characterData: true });
  }, pool);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.UI_CHROMIUM, headless: true, args: ['--no-sandbox'] });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') summary.console_errors.push(m.text()); });
    page.on('pageerror', (e) => summary.console_errors.push('page error: ' + e.message));
    page.on('dialog', (d) => d.accept());

    // Auth is on: without a token the page asks for one and shows nothing else.
    step('open / without a token');
    const resp = await page.goto(base + '/');
    summary.csp = resp.headers()['content-security-policy'] || null;
    summary.url_after_redirect = page.url();
    await page.waitForSelector('#token', { state: 'visible', timeout: 15000 });
    summary.refused_without_token = await page.isHidden('#main');
    await shot(page, 'login');
    step('sign in');
    await page.fill('#token', token);
    await page.press('#token', 'Enter');
    await page.waitForSelector('#main', { state: 'visible', timeout: 15000 });
    summary.works_with_token = true;

    // The pool becomes Ready, live: ui.rs starts pool-managerd once the page is open.
    await page.goto(base + '/ui/#/pools');
    await recordPoolStates(page, pool);
    step('page open on the pools view');
    await page.waitForSelector(`tr[data-pool="${pool}"]`, { timeout: 180000 });
    await page.waitForFunction((pool) => {
      const el = document.querySelector(`tr[data-pool="${pool}"] .pool-state`);
      return el && el.textContent === 'Ready';
    }, pool, { timeout: 180000 });
    summary.states_before_ready = await page.evaluate(() => window.__states);
    await page.goto(base + '/ui/#/overview');
    await page.waitForFunction(() => /^1\/1$/.test((document.getElementById('ov-pools') || {}).textContent || ''), null, { timeout: 30000 });
    summary.overview_pools = await page.textContent('#ov-pools');
    summary.overview_nodes = await page.textContent('#ov-nodes');
    await page.goto(base + '/ui/#/nodes');
    await page.waitForSelector('[data-node]', { timeout: 30000 });
    await shot(page, 'nodes');

    // Playground: text from the real engine arrives in more than one step.
    step('chat in the playground');
    await page.goto(base + '/ui/#/playground');
    await page.waitForFunction((m) => [...document.querySelectorAll('#pg-model option')].some((o) => o.value === m), model, { timeout: 30000 });
    await page.selectOption('#pg-model', model);
    await page.fill('#pg-max', '48');
    await page.evaluate(() => {
      window.__lengths = [];
      new MutationObserver(() => {
        const el = document.querySelector('#chat .msg.assistant:last-child .text');
        const n = el ? el.textContent.length : 0;
        if (n > 0 && window.__lengths[window.__lengths.length - 1] !== n) window.__lengths.push(n);
      }).observe(document.getElementById('chat'), { subtree: true, childList: true, characterData: true });
    });
    await page.fill('#pg-input', 'Write a short poem about the sea.');
    // Sent from the keyboard (Ctrl+Enter in the message box).
    await page.press('#pg-input', 'Control+Enter');
    await page.waitForFunction(() => /TTFT/.test(document.getElementById('pg-stats').textContent), null, { timeout: 120000 });
    summary.chat_steps = await page.evaluate(() => window.__lengths.length);
    summary.chat_text = await page.textContent('#chat .msg.assistant:last-child .text');
    summary.chat_stats = await page.textContent('#pg-stats');
    await page.click('#pg-python');
    summary.python_snippet = await page.textContent('#pg-snippet');
    await page.click('#pg-curl');
    summary.curl_snippet = await page.textContent('#pg-snippet');
    await shot(page, 'playground');

    // A long task started from the API, canceled from its task view.
    step('cancel a long task from the task view');
    const adm = await api('/v2/tasks', {
      model_ref: model, prompt: '1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,', max_tokens: 1500, temperature: 0, seed: 1,
    });
    summary.cancel_task = adm.task_id;
    await page.goto(base + '/ui/#/tasks');
    await page.waitForSelector(`a[href="#/task/${adm.task_id}"]`, { timeout: 30000 });
    await shot(page, 'tasks');
    await page.click(`a[href="#/task/${adm.task_id}"]`);
    await page.waitForSelector('tr.frame-token', { timeout: 60000 });
    await page.waitForFunction(() => !document.getElementById('task-cancel').disabled, null, { timeout: 10000 });
    await page.click('#task-cancel');
    await page.waitForFunction(() => /canceled/.test((document.querySelector('.task-state') || {}).textContent || ''), null, { timeout: 60000 });
    await page.waitForSelector('tr.frame-end', { timeout: 30000 });
    summary.cancel_frames = await page.$$eval('tr[class^="frame-"]', (rows) => rows.length);
    await shot(page, 'task');
    const freed = await until('the slot to be free after the cancel', 30000, async () => {
      const p = (await api('/v2/pools')).pools.find((x) => x.pool_id === pool);
      return p && p.slots_free === p.slots_total && p.running === 0 ? p : null;
    });
    summary.slots_after_cancel = [freed.slots_free, freed.slots_total];

    // Drain and reload from the pools view; the state changes live.
    step('drain and reload from the pools view');
    await page.goto(base + '/ui/#/pools');
    await page.waitForSelector(`[id="drain-${pool}"]:not([disabled])`, { timeout: 30000 });
    await recordPoolStates(page, pool);
    await page.click(`[id="drain-${pool}"]`);
    await page.waitForFunction((pool) => {
      const el = document.querySelector(`tr[data-pool="${pool}"] .pool-state`);
      return el && el.textContent !== 'Ready';
    }, pool, { timeout: 30000 });
    await page.waitForSelector(`[id="reload-${pool}"]:not([disabled])`, { timeout: 60000 });
    summary.drain_progress = await page.textContent('.pool-cmd');
    await shot(page, 'pools-drained');
    await page.click(`[id="reload-${pool}"]`);
    await page.waitForFunction((pool) => {
      const el = document.querySelector(`tr[data-pool="${pool}"] .pool-state`);
      return el && el.textContent === 'Ready' && window.__states.length > 1;
    }, pool, { timeout: 180000 });
    summary.drain_reload_states = await page.evaluate(() => window.__states);
    summary.reload_progress = await page.textContent('.pool-cmd');
    await shot(page, 'pools');

    step('models view, reached with the keyboard');
    await page.focus('nav a[data-view="models"]');
    await page.keyboard.press('Enter');
    await page.waitForSelector(`tr[data-model="${model}"]`, { timeout: 30000 });
    summary.keyboard_nav = await page.evaluate(() => location.hash);
    // Retire and activate again, seen live; verify, with the command's progress.
    const key = model.replace(/[^A-Za-z0-9_-]/g, '_');
    const modelState = (want) => page.waitForFunction(([m, want]) => {
      const el = document.querySelector(`tr[data-model="${m}"] .state`);
      return el && el.textContent === want;
    }, [model, want], { timeout: 30000 });
    await page.click(`[id="retire-${key}"]`);
    await modelState('Retired');
    await page.click(`[id="activate-${key}"]`);
    await modelState('Active');
    summary.model_retired_and_activated = true;
    await page.click(`[id="verify-${key}"]`);
    await page.waitForFunction(() => [...document.querySelectorAll('#main tr')]
      .some((tr) => /verify-model/.test(tr.textContent) && /completed/.test(tr.textContent)), null, { timeout: 120000 });
    summary.model_verified = true;
    await shot(page, 'models');

    step('overview after the activity');
    await page.goto(base + '/ui/#/overview');
    await page.waitForSelector('#ov-pools', { timeout: 10000 });
    summary.overview_after = await page.$$eval('.card .value', (els) => els.map((e) => e.textContent));
    await shot(page, 'overview');

    step('phone width');
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(base + '/ui/#/overview');
    await page.waitForSelector('#ov-pools', { timeout: 10000 });
    summary.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    await shot(page, 'overview-phone');
    console.log('SUMMARY ' + JSON.stringify(summary));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log('SUMMARY ' + JSON.stringify(summary));
  console.error('ui scenario failed: ' + (e && e.stack ? e.stack : e));
  process.exit(1);
});
