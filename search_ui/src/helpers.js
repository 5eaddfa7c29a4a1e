// Pure helpers (no DOM): parsing snippets, placing mentions in report text, labels and query variables.

/** Split a snippet whose matched words are in [brackets] into [{text, mark}] (brackets dropped). */
export function snippetSegments(snippet) {
  const out = [];
  if (typeof snippet !== 'string' || snippet === '') return out;
  const re = /\[([^[\]]*)\]/g;
  let last = 0;
  for (let m = re.exec(snippet); m !== null; m = re.exec(snippet)) {
    if (m.index > last) out.push({ text: snippet.slice(last, m.index), mark: false });
    if (m[1] !== '') out.push({ text: m[1], mark: true });
    last = re.lastIndex;
  }
  if (last < snippet.length) out.push({ text: snippet.slice(last), mark: false });
  return out;
}

/**
 * Cut report text into [{text, mention}] where mention is the Mention covering that slice (or null).
 * Mentions are sorted by begin (longest first on ties); invalid ranges and ones overlapping an earlier
 * kept mention are skipped.
 */
export function mentionSegments(text, mentions) {
  if (typeof text !== 'string') return [];
  const valid = (Array.isArray(mentions) ? mentions : []).filter(
    (m) => m && Number.isInteger(m.begin) && Number.isInteger(m.end) && m.begin >= 0 && m.end > m.begin && m.end <= text.length,
  );
  valid.sort((a, b) => a.begin - b.begin || b.end - a.end);
  const out = [];
  let pos = 0;
  for (const m of valid) {
    if (m.begin < pos) continue; // overlaps the previous kept mention
    if (m.begin > pos) out.push({ text: text.slice(pos, m.begin), mention: null });
    out.push({ text: text.slice(m.begin, m.end), mention: m });
    pos = m.end;
  }
  if (pos < text.length) out.push({ text: text.slice(pos), mention: null });
  return out;
}

const STATUSES = new Set(['positive', 'negative', 'uncertain']);

/** The CSS class for a MentionStatus ('positive' when unknown). */
export function statusClass(status) {
  const s = String(status || '').toLowerCase();
  return STATUSES.has(s) ? s : 'positive';
}

/** Chip text for a mention: "no X" when negative, "X?" when uncertain. */
export function mentionLabel(m) {
  const base = (m && (m.finding || m.text || m.description || m.code)) || 'finding';
  const s = statusClass(m && m.status);
  if (s === 'negative') return `no ${base}`;
  if (s === 'uncertain') return `${base}?`;
  return base;
}

/** Tooltip for a mention: code — description (status). */
export function mentionTitle(m) {
  const parts = [];
  if (m.code) parts.push(m.description ? `${m.code} — ${m.description}` : m.code);
  else if (m.description) parts.push(m.description);
  parts.push(statusClass(m.status));
  return parts.join(' · ');
}

/** Text of a facet button: "code — description (n)". */
export function facetLabel(f) {
  const n = Number.isFinite(f.reports) ? ` (${f.reports})` : '';
  return f.description ? `${f.code} — ${f.description}${n}` : `${f.code}${n}`;
}

/** The top n facets of kind "code", most reports first. */
export function topCodes(facets, n = 10) {
  return (Array.isArray(facets) ? facets : [])
    .filter((f) => f && f.kind === 'code' && typeof f.code === 'string')
    .slice()
    .sort((a, b) => (b.reports || 0) - (a.reports || 0))
    .slice(0, n);
}

/**
 * GraphQL variables for reports/facets: text only when allowed and non-empty, codes only when some are
 * selected, status only when not "any". Undefined keys are dropped by JSON.stringify, so the schema's
 * defaults apply.
 */
export function searchVariables({ text, codes, status, since, until, canReadReports }) {
  const v = {};
  const t = typeof text === 'string' ? text.trim() : '';
  if (canReadReports && t) v.text = t;
  if (Array.isArray(codes) && codes.length) v.codes = codes.slice();
  const s = String(status || 'any').toUpperCase();
  if (s === 'POSITIVE' || s === 'NEGATIVE' || s === 'UNCERTAIN') v.status = s;
  // <input type=date> values are YYYY-MM-DD or empty; the API checks them again
  if (/^\d{4}-\d{2}-\d{2}$/.test(since || '')) v.since = since;
  if (/^\d{4}-\d{2}-\d{2}$/.test(until || '')) v.until = until;
  return v;
}

/** ImageFilter with only the non-empty fields, or undefined when none. */
export function imageFilter({ modality, label }) {
  const f = {};
  const mod = typeof modality === 'string' ? modality.trim() : '';
  const lab = typeof label === 'string' ? label.trim() : '';
  if (mod && mod.toLowerCase() !== 'any') f.modality = mod;
  if (lab) f.label = lab;
  return Object.keys(f).length ? f : undefined;
}

/** Parse location.hash into a route: {name: 'search'}, {name: 'study', uid} or {name: 'signin', user} (a
 * sign-in link that fills in the username; never a password). */
export function parseRoute(hash) {
  const h = String(hash || '').replace(/^#/, '');
  const s = /^\/signin\/([A-Za-z0-9._@+-]{1,128})$/.exec(h);
  if (s) return { name: 'signin', user: s[1] };
  const m = /^\/study\/(.+)$/.exec(h);
  if (m) {
    let uid;
    try {
      uid = decodeURIComponent(m[1]);
    } catch {
      uid = m[1];
    }
    return { name: 'study', uid };
  }
  return { name: 'search' };
}

/** The hash link of a study. */
export function studyHref(uid) {
  return `#/study/${encodeURIComponent(uid)}`;
}

/** True for an http(s) URL (thumbnails, the viewer); anything else is not used as a link or src. */
export function isHttpUrl(value) {
  if (typeof value !== 'string' || value === '') return false;
  try {
    const u = new URL(value, 'https://placeholder.invalid/');
    return u.protocol === 'https:' || u.protocol === 'http:';
  } catch {
    return false;
  }
}

/** The viewer link for a study, or null when no (usable) viewer is configured. */
export function viewerHref(viewerUrl, uid) {
  if (!isHttpUrl(viewerUrl)) return null;
  return `${viewerUrl}?StudyInstanceUIDs=${encodeURIComponent(uid)}`;
}

/** A score with a fixed number of decimals ("–" when missing). */
export function formatScore(score, digits = 3) {
  return Number.isFinite(score) ? score.toFixed(digits) : '–';
}
