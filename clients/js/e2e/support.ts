/** End-to-end harness: the real `tidings demo` binary on 127.0.0.1, real headless Chromium
 * through playwright-core, and the hub's own /metrics as the witness of how many streams are
 * open. Nothing is mocked. A missing binary or browser is an error, never a skip. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeEach } from 'vitest';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.TIDINGS_BIN ?? join(REPO, 'target/debug/tidings');
export const CHROMIUM = process.env.TIDINGS_CHROMIUM ?? '/usr/bin/chromium';
/** Lets tests publish arbitrary activities through `POST /events`. */
export const PUBLISHER_KEY = 'e2e-publisher-key';
/** Ping interval of the demo under test: short, so liveness is exercised too. */
const HEARTBEAT = '1s';
const START_TIMEOUT_MS = 20_000;

export interface Demo {
  url: string;
  addr: string;
  port: number;
  proc: ChildProcess;
  output: string[];
  /** Sends a signal and waits for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `tidings demo` (without the teammate) and waits for its `listening on` line. */
export async function startDemo(port = 0): Promise<Demo> {
  return spawnHub(['demo', '--listen', `127.0.0.1:${port}`, '--no-teammate', '--heartbeat', HEARTBEAT, '--publisher-key', PUBLISHER_KEY], 'tidings demo');
}

/** Starts `tidings serve` with `config` (TOML) written to a fresh directory beside `files`
 * (name → contents, for a mapping or a tokens file the configuration names). */
export async function startServe(config: string, files: Record<string, string> = {}): Promise<Demo & { dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'tidings-e2e-'));
  for (const [name, contents] of Object.entries(files)) writeFileSync(join(dir, name), contents);
  writeFileSync(join(dir, 'hub.toml'), config);
  const hub = await spawnHub(['serve', '--listen', '127.0.0.1:0', '--config', join(dir, 'hub.toml')], 'tidings serve');
  return {
    ...hub,
    dir,
    async stop(signal?: NodeJS.Signals) {
      await hub.stop(signal);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function spawnHub(args: string[], what: string): Promise<Demo> {
  if (!existsSync(BIN)) throw new Error(`the tidings binary is missing at ${BIN}: build it with \`cargo build -p tidings\` (or set TIDINGS_BIN)`);
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TIDINGS_LOG: 'warn' } });
  const output: string[] = [];
  const exited = new Promise<void>((done) => proc.once('exit', () => done()));
  const addr = await new Promise<string>((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`${what} did not start within ${START_TIMEOUT_MS} ms:\n${output.join('\n')}`)), START_TIMEOUT_MS);
    proc.once('error', (e) => fail(e));
    proc.once('exit', (code) => fail(new Error(`${what} exited with ${code}:\n${output.join('\n')}`)));
    for (const pipe of [proc.stdout!, proc.stderr!]) {
      createInterface({ input: pipe }).on('line', (line) => {
        output.push(line);
        const m = /listening on http:\/\/(\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          done(m[1]!);
        }
      });
    }
  });
  return {
    url: `http://${addr}`,
    addr,
    port: Number(addr.split(':').pop()),
    proc,
    output,
    async stop(signal: NodeJS.Signals = 'SIGKILL') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** Starts the demo on a port that was just in use, retrying while the port is not free yet. */
export async function restartDemo(port: number): Promise<Demo> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startDemo(port);
    } catch (e) {
      if (attempt >= 20 || !/binding|in use/i.test(String(e))) throw e;
      await sleep(100);
    }
  }
}

export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`Chromium is missing at ${CHROMIUM}: install it (\`apt-get install chromium\`, see .ci/run) or set TIDINGS_CHROMIUM`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
  });
}

/** The hub's counters that tell how many streams exist and how many were ever asked for. */
export interface StreamCounts {
  open: number;
  opened: number;
  refused: number;
}

export async function streamCounts(demo: Demo): Promise<StreamCounts> {
  const text = await (await fetch(`${demo.url}/metrics`)).text();
  const sum = (name: string) => sumMetric(text, name);
  return { open: sum('tidings_streams_open'), opened: sum('tidings_streams_opened_total'), refused: sum('tidings_stream_refusals_total') };
}

/** One series of the hub's /metrics, summed over its labels unless `name` spells them
 * (`tidings_resyncs_total{reason="epoch_changed"}`); 0 when absent. */
export async function metric(demo: Demo, name: string): Promise<number> {
  return sumMetric(await (await fetch(`${demo.url}/metrics`)).text(), name);
}

function sumMetric(text: string, name: string): number {
  return text
    .split('\n')
    .filter((l) => l.startsWith(name) && (l[name.length] === ' ' || l[name.length] === '{'))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

/** Polls until `check` holds, or throws with the last value seen. */
export async function waitFor<T>(what: string, read: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 5_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T;
  for (;;) {
    last = await read();
    if (check(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await sleep(everyMs);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The console's connection badge: `state` (connected, reconnecting, …) and tab `role`. */
export async function connection(page: Page): Promise<{ state: string | null; role: string | null }> {
  const badge = page.getByTestId('connection');
  if ((await badge.count()) === 0) return { state: null, role: null };
  return { state: await badge.getAttribute('data-state'), role: await badge.getAttribute('data-role') };
}

export async function waitConnected(page: Page, timeoutMs = 10_000): Promise<void> {
  await page.locator('[data-testid="connection"][data-state="connected"]').waitFor({ timeout: timeoutMs });
}

/** Signs in through the page's own sign-in screen. */
export async function signIn(page: Page, demo: Demo, user: string): Promise<void> {
  await page.goto(demo.url);
  await page.getByTestId(`signin-${user}`).click();
  await waitConnected(page);
}

/** Signs a context in through the API (the cookie lands in the context's jar), without a page. */
export async function signInContext(context: BrowserContext, demo: Demo, user: string): Promise<void> {
  const r = await context.request.post(`${demo.url}/demo/api/login`, { data: { user } });
  if (!r.ok()) throw new Error(`login ${user}: HTTP ${r.status()}`);
}

/** A signed-in API client for one demo user, for changes made outside any browser. */
export async function apiAs(demo: Demo, user: string) {
  const login = await fetch(`${demo.url}/demo/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
  if (!login.ok) throw new Error(`login ${user}: HTTP ${login.status}`);
  const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${demo.url}/demo/api${path}`, {
      method,
      headers: { cookie, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!r.ok) throw new Error(`${method} ${path}: HTTP ${r.status}`);
    return r.status === 204 ? undefined : ((await r.json()) as Record<string, unknown>);
  };
  return {
    cookie,
    list: async () => ((await call('GET', '/applications')) as { applications: Array<{ id: number; name: string }> }).applications,
    edit: (id: number, changes: Record<string, unknown>) => call('PATCH', `/applications/${id}`, changes),
    create: (name: string) => call('POST', '/applications', { name }),
    editRule: (id: number, action: 'allow' | 'deny') => call('PATCH', `/firewall-rules/${id}`, { action }),
  };
}

/** Publishes through the hub's publish API, as a backend service would. */
export async function publish(demo: Demo, account: string, data: unknown): Promise<string[]> {
  const r = await fetch(`${demo.url}/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${PUBLISHER_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ account, data }),
  });
  if (r.status !== 202) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
  return ((await r.json()) as { ids: string[] }).ids;
}

/** The descriptions of the live activity feed, newest first. */
export async function feed(page: Page): Promise<string[]> {
  return page.locator('[data-testid="feed"] li[data-event-id]').evaluateAll((lis) => lis.map((li) => li.textContent ?? ''));
}

const bundles = new Map<string, Promise<string>>();

/** Bundles `contents` (resolved from clients/js) for a plain page as `window.TidingsSDK`. */
function pageBundle(contents: string): Promise<string> {
  let bundle = bundles.get(contents);
  if (!bundle) {
    bundle = import('esbuild').then(async (esbuild) => {
      const out = await esbuild.build({
        stdin: { contents, resolveDir: join(REPO, 'clients/js'), loader: 'ts' },
        bundle: true,
        format: 'iife',
        globalName: 'TidingsSDK',
        target: 'es2022',
        write: false,
        logLevel: 'silent',
      });
      return out.outputFiles[0]!.text;
    });
    bundles.set(contents, bundle);
  }
  return bundle;
}

/** The SDK's core bundled for a plain page (`window.TidingsSDK`), for scenarios that drive the
 * SDK directly rather than through the demo console. */
export function sdkScript(): Promise<string> {
  return pageBundle(`export * from './src/index.ts';`);
}

/** The core, the TanStack adapter and query-core bundled for a plain page
 * (`window.TidingsSDK` with `connectQueryClient`, `QueryClient` and `QueryObserver`). */
export function sdkQueryScript(): Promise<string> {
  return pageBundle(`export * from './src/index.ts'; export { connectQueryClient } from './src/query.ts'; export { QueryClient, QueryObserver } from '@tanstack/query-core';`);
}

/** Signs a context in through the API and returns the session id (the SDK's `sessionKey`). */
export async function sessionOf(context: BrowserContext, demo: Demo, user: string): Promise<string> {
  const login = await context.request.post(`${demo.url}/demo/api/login`, { data: { user } });
  if (!login.ok()) throw new Error(`login ${user}: HTTP ${login.status()}`);
  return ((await login.json()) as { session: string }).session;
}

/** A page on the demo's origin (so the session cookie and Web Locks apply) with the SDK
 * loaded and nothing else running. */
export async function sdkPage(context: BrowserContext, demo: Demo, withQuery = false): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${demo.url}/demo/api/users`);
  await page.addScriptTag({ content: await (withQuery ? sdkQueryScript() : sdkScript()) });
  return page;
}

/** Publishes a batch (up to 1,000 items) in one request; an item's `audience` limits who sees it. */
export async function publishBatch(demo: Demo, items: Array<{ account: string; data: unknown; audience?: string[] }>): Promise<string[]> {
  const r = await fetch(`${demo.url}/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${PUBLISHER_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(items),
  });
  if (r.status !== 202) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
  return ((await r.json()) as { ids: string[] }).ids;
}

/** The p-th percentile (0–100) of `values`, nearest rank. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** One browser per file and a fresh demo hub per test, with the contexts a test opened closed
 * after it. Hooks run in `beforeEach`, not `beforeAll`: a missing browser or binary then fails
 * every test by name instead of reporting them skipped. */
export interface DemoEnv {
  /** The demo hub of the running test (a test may replace it, e.g. after a restart). */
  demo: Demo;
  newContext(): Promise<BrowserContext>;
}

export function useDemo(): DemoEnv {
  let browser: Browser | undefined;
  const contexts: BrowserContext[] = [];
  const env: DemoEnv = {
    demo: undefined as unknown as Demo,
    async newContext() {
      const c = await browser!.newContext();
      contexts.push(c);
      return c;
    },
  };
  afterAll(async () => {
    await browser?.close();
  });
  beforeEach(async () => {
    browser ??= await launchBrowser();
    env.demo = await startDemo();
  });
  afterEach(async () => {
    await Promise.all(contexts.splice(0).map((c) => c.close()));
    await env.demo?.stop();
  });
  return env;
}
