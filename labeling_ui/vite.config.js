// Builds the worker viewer into dist/ as a static bundle: dist/viewer.js (+ chunks, decode worker,
// codecs) and dist/viewer.css. The Liquid template loads it from a base URL (the local portal's /ui/,
// or an S3/CloudFront prefix on AWS), so every asset path is relative to the bundle itself.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
    rollupOptions: {
      input: 'src/main.js',
      output: {
        entryFileNames: 'viewer.js',
        chunkFileNames: 'chunks/[name]-[hash].js',
        assetFileNames: (info) =>
          (info.names || [info.name]).some((n) => n && n.endsWith('.css')) ? 'viewer.css' : 'assets/[name]-[hash][extname]',
      },
    },
  },
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser'],
  },
  worker: {
    format: 'es',
  },
});
