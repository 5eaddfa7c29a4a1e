// Builds the dicomflow report-search page (index.html + src/main.js) into dist/ as a static bundle
// (dist/index.html + dist/assets/*). Every asset path is relative, so dist/ can be served from any prefix.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    modulePreload: { polyfill: false },
  },
});
