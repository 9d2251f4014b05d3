import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

export default defineConfig({
  plugins: [vue()],
  // The hub on another port in development: the browser SDK guide's proxy configuration.
  server: { proxy: { '/events': 'http://127.0.0.1:8080', '/api': 'http://127.0.0.1:8080' } },
});
