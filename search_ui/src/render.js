// DOM builders. Every node is made with createElement/textContent: report text, snippets and labels are
// untrusted and never parsed as HTML.
import {
  facetLabel, formatScore, isHttpUrl, mentionLabel, mentionSegments, mentionTitle, snippetSegments,
  statusClass, studyHref,
} from './helpers.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** createElement with attributes (set as properties when they exist, else attributes) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('data-') || key.startsWith('aria-') || key === 'role') node.setAttribute(key, String(value));
    else if (key in node) node[key] = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Empty a node. */
export function clear(node) {
  node.replaceChildren();
}

/** A mention chip. */
export function mentionChip(m) {
  return el('span', {
    'data-testid': 'mention', class: `mention ${statusClass(m.status)}`, title: mentionTitle(m), text: mentionLabel(m),
  });
}

function chipList(mentions) {
  const list = el('div', { class: 'mentions' });
  for (const m of mentions || []) list.append(mentionChip(m), ' ');
  return list;
}

/** A snippet paragraph with the [bracketed] words as <mark>. */
export function snippetNode(snippet) {
  const p = el('p', { class: 'snippet' });
  for (const seg of snippetSegments(snippet)) p.append(seg.mark ? el('mark', { text: seg.text }) : document.createTextNode(seg.text));
  return p;
}

/** One search hit. */
export function hitNode(hit) {
  const uid = String(hit.studyInstanceUID);
  const article = el('article', { class: 'hit', 'data-testid': 'hit', 'data-study': uid, tabIndex: -1 });
  article.append(el('header', { class: 'hit-header' },
    // accession and date come to radiologists only
    el('h3', { class: 'accession', text: (hit.accessionNumber ? `Accession ${hit.accessionNumber}` : 'Study')
      + (hit.studyDate ? ` · ${hit.studyDate}` : '') }),
    el('span', { class: 'score', title: 'relevance score', text: `score ${formatScore(hit.score)}` })));
  article.append(el('p', { class: 'uid', text: uid }));
  if (typeof hit.snippet === 'string' && hit.snippet) article.append(snippetNode(hit.snippet));
  if (hit.mentions && hit.mentions.length) article.append(chipList(hit.mentions));
  article.append(el('a', { 'data-testid': 'open-study', class: 'open-study', href: studyHref(uid), text: 'Open study' }));
  return article;
}

/** Facet toggle buttons. */
export function facetButtons(facets, selected) {
  return facets.map((f) => el('button', {
    type: 'button', class: 'facet', 'data-testid': 'facet', 'data-code': f.code,
    'aria-pressed': selected.includes(f.code) ? 'true' : 'false', text: facetLabel(f),
    title: f.description ? `${f.code}: ${f.description}` : f.code,
  }));
}

/** Inline SVG horizontal bar chart of report counts per code. */
export function facetChart(facets) {
  const rows = facets.filter((f) => Number.isFinite(f.reports));
  const labelW = 70;
  const countW = 48;
  const barAreaW = 300;
  const rowH = 24;
  const gap = 6;
  const width = labelW + barAreaW + countW;
  const height = Math.max(rowH, rows.length * (rowH + gap) - gap);
  const max = Math.max(1, ...rows.map((f) => f.reports));
  const summary = rows.map((f) => `${f.code} ${f.reports} report${f.reports === 1 ? '' : 's'}`).join(', ');
  const root = svg('svg', {
    role: 'img', viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart',
    'aria-label': rows.length ? `Top ICD-10-CM codes by number of reports: ${summary}` : 'No codes to chart',
  });
  root.append(svg('title', {}, rows.length ? `Top codes: ${summary}` : 'No codes to chart'));
  rows.forEach((f, i) => {
    const y = i * (rowH + gap);
    const w = Math.max(2, Math.round((f.reports / max) * barAreaW));
    const g = svg('g', { class: 'chart-row' });
    const label = svg('text', { x: labelW - 8, y: y + rowH / 2, class: 'chart-label', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, f.code);
    const bar = svg('rect', { x: labelW, y, width: w, height: rowH, rx: 3, class: 'chart-bar' });
    bar.append(svg('title', {}, f.description ? `${f.code} — ${f.description}: ${f.reports}` : `${f.code}: ${f.reports}`));
    const count = svg('text', { x: labelW + w + 6, y: y + rowH / 2, class: 'chart-count', 'dominant-baseline': 'middle' }, String(f.reports));
    g.append(label, bar, count);
    root.append(g);
  });
  return root;
}

/** Fill #report-text: the text with mentions wrapped, or the mentions as chips when the text is hidden. */
export function fillReport(container, report) {
  clear(container);
  if (!report) {
    container.append(el('p', { class: 'empty', text: 'No report for this study.' }));
    return;
  }
  if (typeof report.text !== 'string') {
    container.append(el('p', { class: 'notice', text: 'Report text is visible to radiologists only' }));
    if (report.mentions && report.mentions.length) container.append(chipList(report.mentions));
    return;
  }
  const pre = el('div', { class: 'report-body' });
  for (const seg of mentionSegments(report.text, report.mentions)) {
    if (seg.mention) {
      pre.append(el('span', {
        'data-testid': 'mention', class: `mention ${statusClass(seg.mention.status)}`, title: mentionTitle(seg.mention), text: seg.text,
      }));
    } else pre.append(document.createTextNode(seg.text));
  }
  container.append(pre);
}

function thumbnail(image) {
  if (!isHttpUrl(image.thumbnailUrl)) return el('div', { class: 'no-thumb', text: 'no thumbnail' });
  const img = el('img', { alt: `thumbnail of ${image.modality || 'unknown'} image`, loading: 'eager', decoding: 'async' });
  img.referrerPolicy = 'no-referrer';
  img.src = image.thumbnailUrl;
  return img;
}

function imageFacts(image) {
  return [image.modality, image.viewPosition, image.bodyPart].filter(Boolean).join(' · ');
}

/** The study's own images. */
export function studyImages(images) {
  if (!images || !images.length) return [el('p', { class: 'empty', text: 'No indexed images for this study.' })];
  return [el('ul', { class: 'images' }, images.map((image) => el('li', { class: 'image' },
    image.thumbnailUrl ? thumbnail(image) : null,
    el('span', { class: 'uid', text: image.sopInstanceUID }),
    imageFacts(image) ? el('span', { class: 'facts', text: ` ${imageFacts(image)}` }) : null,
    image.labels && image.labels.length ? el('span', { class: 'labels', text: ` ${image.labels.join(', ')}` }) : null)))];
}

/** One similar image. */
export function neighbourNode(n) {
  const image = n.image || {};
  const caption = el('figcaption', {},
    el('span', { class: 'rank', text: `#${n.rank}` }), ' ',
    el('span', { class: 'score', text: formatScore(n.score) }), ' ',
    el('span', { class: 'modality', text: image.modality || '?' }),
    image.labels && image.labels.length ? el('span', { class: 'labels', text: image.labels.join(', ') }) : null);
  return el('figure', { class: 'neighbour', 'data-testid': 'neighbour', 'data-sop': image.sopInstanceUID || '' },
    el('a', { href: studyHref(String(image.studyInstanceUID || '')), title: `open study ${image.studyInstanceUID}` },
      thumbnail(image), caption));
}
