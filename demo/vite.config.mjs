// Builds the demo page into crates/tidings/demo-dist/, which the `tidings` binary embeds.
// File names are fixed (no content hash, one JS and one CSS file) because the binary serves
// them by name; the build is deterministic so `npm run check` can compare it with the commit.
import { fileURLToPath } from 'node:url';
import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

const sdk = (entry) => fileURLToPath(new URL(`../clients/js/src/${entry}.ts`, import.meta.url));

export default defineConfig({
  plugins: [vue()],
  resolve: {
    // The SDK from source, so the page always runs the SDK of this commit.
    alias: [
      { find: /^tidings$/, replacement: sdk('index') },
      { find: /^tidings\/query$/, replacement: sdk('query') },
      { find: /^tidings\/vue$/, replacement: sdk('vue') },
    ],
    // One copy of each, resolved from this folder: the SDK's source lives outside it.
    dedupe: ['vue', '@tanstack/vue-query', '@tanstack/query-core', 'eventsource-parser'],
  },
  define: { __VUE_OPTIONS_API__: 'false', __VUE_PROD_DEVTOOLS__: 'false', __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: 'false' },
  build: {
    outDir: process.env.DEMO_OUT_DIR ?? fileURLToPath(new URL('../crates/tidings/demo-dist', import.meta.url)),
    emptyOutDir: true,
    modulePreload: false,
    cssCodeSplit: false,
    reportCompressedSize: false,
    rollupOptions: {
      output: {
        entryFileNames: 'assets/app.js',
        chunkFileNames: 'assets/[name].js',
        assetFileNames: 'assets/app[extname]',
        codeSplitting: false,
      },
    },
  },
  server: {
    // `npm run dev` against a running `tidings demo` on the default port.
    proxy: { '/demo/api': 'http://127.0.0.1:8080', '/events': 'http://127.0.0.1:8080', '/metrics': 'http://127.0.0.1:8080' },
  },
});
