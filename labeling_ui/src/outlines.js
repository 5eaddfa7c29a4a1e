// Outline geometry in image coordinates ([x, y], [0, 0] the top-left corner of the top-left pixel):
// the helpers behind "copy to next slice" and "interpolate between slices". Pure functions, no Cornerstone.

/** Signed area (shoelace): positive for one winding, negative for the other. */
export function signedArea(points) {
  let a = 0;
  for (let i = 0; i < points.length; i += 1) {
    const [x0, y0] = points[i];
    const [x1, y1] = points[(i + 1) % points.length];
    a += x0 * y1 - x1 * y0;
  }
  return a / 2;
}

/** ``n`` points evenly spaced by arc length along the closed outline. */
export function resample(points, n) {
  const pts = points.map((p) => [p[0], p[1]]);
  const lengths = [0];
  for (let i = 0; i < pts.length; i += 1) {
    const [x0, y0] = pts[i];
    const [x1, y1] = pts[(i + 1) % pts.length];
    lengths.push(lengths[i] + Math.hypot(x1 - x0, y1 - y0));
  }
  const total = lengths[lengths.length - 1];
  if (total === 0) return Array.from({ length: n }, () => [...pts[0]]);
  const out = [];
  let seg = 0;
  for (let k = 0; k < n; k += 1) {
    const d = (total * k) / n;
    while (lengths[seg + 1] < d) seg += 1;
    const span = lengths[seg + 1] - lengths[seg] || 1;
    const t = (d - lengths[seg]) / span;
    const [x0, y0] = pts[seg];
    const [x1, y1] = pts[(seg + 1) % pts.length];
    out.push([x0 + t * (x1 - x0), y0 + t * (y1 - y0)]);
  }
  return out;
}

/** ``b`` turned to ``a``'s winding and rotated so that its points pair with ``a``'s most closely. */
export function align(a, b) {
  let c = Math.sign(signedArea(a)) === Math.sign(signedArea(b)) ? b : [...b].reverse();
  let best = 0;
  let bestCost = Infinity;
  for (let s = 0; s < c.length; s += 1) {
    let cost = 0;
    for (let i = 0; i < a.length; i += 1) {
      const q = c[(i + s) % c.length];
      cost += (a[i][0] - q[0]) ** 2 + (a[i][1] - q[1]) ** 2;
    }
    if (cost < bestCost) { bestCost = cost; best = s; }
  }
  c = c.map((_, i) => c[(i + best) % c.length]);
  return c;
}

/** The outlines between ``a`` (at t = 0) and ``b`` (at t = 1) for each t of ``ts``: point-wise linear blends
 * of both resampled to ``n`` points and aligned. */
export function interpolate(a, b, ts, n = 64) {
  const ra = resample(a, n);
  const rb = align(ra, resample(b, n));
  return ts.map((t) => ra.map((p, i) => [p[0] + t * (rb[i][0] - p[0]), p[1] + t * (rb[i][1] - p[1])]));
}

/** The largest outline (by area) of a list. */
export function largest(outlines) {
  return outlines.reduce((best, o) => (Math.abs(signedArea(o)) > Math.abs(signedArea(best)) ? o : best));
}

/**
 * The outlines to add so that every slice between two outlined slices of a label has one: ``bySlice`` maps a
 * slice index to that label's outlines there. Returns [[slice index, outline], ...].
 */
export function fillGaps(bySlice) {
  const slices = [...bySlice.keys()].sort((x, y) => x - y);
  const added = [];
  for (let k = 0; k + 1 < slices.length; k += 1) {
    const lo = slices[k];
    const hi = slices[k + 1];
    if (hi - lo < 2) continue;
    const ts = [];
    for (let s = lo + 1; s < hi; s += 1) ts.push((s - lo) / (hi - lo));
    const blends = interpolate(largest(bySlice.get(lo)), largest(bySlice.get(hi)), ts);
    blends.forEach((o, i) => added.push([lo + 1 + i, o]));
  }
  return added;
}
