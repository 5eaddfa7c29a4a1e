// Painted masks -> closed outlines in image coordinates ([x, y], [0, 0] the top-left corner of the top-left
// pixel), so that a brush answer travels as the same contours a freehand outline does. Pure functions.
//
// The outlines run along pixel edges: filling them by the even-odd rule at pixel centres (what the
// consolidation's rasteriser does) gives back exactly the painted pixels, holes included. The even-odd fill
// depends only on the set of edges, so how the edges are chained into loops at a corner where two painted
// pixels touch diagonally does not change the mask.

/** Closed outlines of the pixels of ``pixels`` (row-major, ``rows`` x ``cols``) equal to ``value``. */
export function maskOutlines(pixels, rows, cols, value) {
  const inside = (r, c) => r >= 0 && r < rows && c >= 0 && c < cols && pixels[r * cols + c] === value;
  const key = (x, y) => y * (cols + 1) + x;
  const edges = new Map(); // start vertex -> [end vertex, ...]; clockwise on screen (y grows downwards)
  const add = (x0, y0, x1, y1) => {
    const k = key(x0, y0);
    if (!edges.has(k)) edges.set(k, []);
    edges.get(k).push(key(x1, y1));
  };
  for (let r = 0; r < rows; r += 1) {
    for (let c = 0; c < cols; c += 1) {
      if (!inside(r, c)) continue;
      if (!inside(r - 1, c)) add(c, r, c + 1, r);
      if (!inside(r, c + 1)) add(c + 1, r, c + 1, r + 1);
      if (!inside(r + 1, c)) add(c + 1, r + 1, c, r + 1);
      if (!inside(r, c - 1)) add(c, r + 1, c, r);
    }
  }
  const outlines = [];
  for (const start of [...edges.keys()]) {
    while (edges.get(start)?.length) {
      const loop = [start];
      let at = edges.get(start).pop();
      while (at !== start) {
        loop.push(at);
        at = edges.get(at).pop();
      }
      outlines.push(corners(loop.map((k) => [k % (cols + 1), Math.floor(k / (cols + 1))])));
    }
    edges.delete(start);
  }
  return outlines;
}

/** The loop without the vertices in the middle of a straight run. */
function corners(loop) {
  const n = loop.length;
  return loop.filter((p, i) => {
    const a = loop[(i + n - 1) % n];
    const b = loop[(i + 1) % n];
    return (p[0] - a[0]) * (b[1] - p[1]) !== (p[1] - a[1]) * (b[0] - p[0]);
  });
}
