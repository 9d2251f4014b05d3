// The Vite dev-server configuration of docs/browser-sdk.md ("Vite dev server"): the page on
// Vite's origin, the hub's stream (and here the demo API) proxied to the hub, so the stream is
// same-origin: the session cookie applies and no CORS is involved. e2e/vite-proxy.test.ts runs
// it against the real hub.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const hub = process.env.TIDINGS_HUB ?? 'http://127.0.0.1:8080';

export default defineConfig({
  server: {
    proxy: {
      '/events': { target: hub },
      '/demo/api': { target: hub },
    },
  },
  // This test page takes the SDK from source; an app imports the installed package instead.
  resolve: { alias: { tidings: fileURLToPath(new URL('../../src/index.ts', import.meta.url)) } },
});
