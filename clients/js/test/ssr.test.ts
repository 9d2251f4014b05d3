// Server rendering: no window, no self. Rendering a page twice with a shared instance opens no
// stream and leaves no listener behind, in Vue and React alike.
import { QueryClient as ReactQueryClient, QueryClientProvider } from '@tanstack/react-query';
import { QueryClient as VueQueryClient, VueQueryPlugin } from '@tanstack/vue-query';
import { createElement, useEffect, type ReactNode } from 'react';
import { renderToString as renderReact } from 'react-dom/server';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createSSRApp, defineComponent, effectScope, h, onMounted } from 'vue';
import { renderToString as renderVue } from 'vue/server-renderer';
import { silentLogger } from '../src/env.js';
import { useTidings as useTidingsReact } from '../src/react.js';
import { createTidings, type Tidings } from '../src/tidings.js';
import { useTidings as useTidingsVue } from '../src/vue.js';

/** A shared instance whose subscriptions are counted, and a global fetch that counts calls. */
function counted(): { tidings: Tidings; listeners: () => number } {
  const tidings = createTidings({ url: '/events/stream', sessionKey: 'ssr', logger: silentLogger });
  let live = 0;
  const subscribe = tidings.subscribe.bind(tidings);
  tidings.subscribe = (listener) => {
    live++;
    const off = subscribe(listener);
    let done = false;
    return () => {
      if (!done) live--;
      done = true;
      off();
    };
  };
  return { tidings, listeners: () => live };
}

let fetches = 0;
beforeEach(() => {
  fetches = 0;
  vi.stubGlobal('fetch', () => {
    fetches++;
    return Promise.reject(new Error('no network on the server'));
  });
});
afterEach(() => vi.unstubAllGlobals());

describe('server rendering', () => {
  it('runs without window or self', () => {
    expect(typeof window).toBe('undefined');
    expect(typeof self).toBe('undefined');
  });

  it('start() outside a browser opens no stream', async () => {
    const { tidings } = counted();
    tidings.start();
    await new Promise((r) => setTimeout(r, 20));
    expect(tidings.status.role).toBe('idle');
    expect(fetches).toBe(0);
  });

  it('Vue: renderToString twice with a shared instance subscribes nothing and opens nothing', async () => {
    const { tidings, listeners } = counted();
    const Page = defineComponent({
      setup() {
        const t = useTidingsVue(tidings);
        t.on('activity', () => {});
        onMounted(() => tidings.start());
        return () => h('span', `${t.connectionState.value}:${String(t.isConnected.value)}:${t.clientId.value ?? '-'}`);
      },
    });
    for (let i = 0; i < 2; i++) {
      const app = createSSRApp(Page).use(VueQueryPlugin, { queryClient: new VueQueryClient() });
      expect(await renderVue(app)).toBe('<span>idle:false:-</span>');
      expect(listeners()).toBe(0);
    }
    // Outside a component (a store or a plugin running on the server): nothing either.
    const scope = effectScope();
    scope.run(() => useTidingsVue(tidings, { queryClient: new VueQueryClient() as never }).on('activity', () => {}));
    expect(listeners()).toBe(0);
    scope.stop();
    expect(fetches).toBe(0);
  });

  it('React: renderToString twice with a shared instance subscribes nothing and opens nothing', () => {
    const { tidings, listeners } = counted();
    function Page(): ReactNode {
      const t = useTidingsReact(tidings);
      const { on } = t;
      useEffect(() => on('activity', () => {}), [on]);
      useEffect(() => tidings.start(), []);
      return createElement('span', null, `${t.connectionState}:${String(t.isConnected)}:${t.clientId ?? '-'}`);
    }
    for (let i = 0; i < 2; i++) {
      const html = renderReact(createElement(QueryClientProvider, { client: new ReactQueryClient() }, createElement(Page)));
      expect(html).toBe('<span>idle:false:-</span>');
      expect(listeners()).toBe(0);
    }
    expect(fetches).toBe(0);
  });
});
