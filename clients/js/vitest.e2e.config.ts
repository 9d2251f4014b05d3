import { defineConfig } from 'vitest/config';

// End-to-end tests: real `tidings demo` binary, real headless Chromium. One file at a time and
// one test at a time: each test owns a hub and a browser, and the machine may be small.
export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    environment: 'node',
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
