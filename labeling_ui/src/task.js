// Task input -> the viewer's model. The pre-label Lambda's taskInput is read liberally so the viewer
// keeps working while its shape evolves; the canonical fields are documented in labeling_ui/README.md.

export const CHEXPERT_CLASSES = [
  'No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema',
  'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion', 'Pleural Other',
  'Fracture', 'Support Devices',
];

function first(obj, ...keys) {
  for (const k of keys) {
    if (obj && obj[k] !== undefined && obj[k] !== null && obj[k] !== '') return obj[k];
  }
  return undefined;
}

function sopFromUrl(url) {
  const m = /[?&]objectUID=([^&]+)/.exec(url);
  return m ? decodeURIComponent(m[1]) : undefined;
}

function num(v) {
  if (Array.isArray(v)) v = v[0];
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** Parse the task input JSON (object or string) into {images, labels, window, uids, modality}. */
export function normalizeTask(raw) {
  let task = raw;
  if (typeof task === 'string') task = JSON.parse(task);
  if (!task || typeof task !== 'object') throw new Error('task input is empty');
  if (task.taskInput && typeof task.taskInput === 'object') task = task.taskInput;

  let items = first(task, 'images', 'instances', 'imageUrls', 'wadoUris', 'urls', 'slices');
  if (!items && (task.wadoUri || task.url)) items = [task];
  if (!Array.isArray(items) || items.length === 0) {
    throw new Error('task input has no images (expected "images": [{"url", "sopInstanceUID"}])');
  }
  const sops = first(task, 'sopInstanceUIDs') || [];
  const images = items.map((it, i) => {
    const url = typeof it === 'string' ? it : first(it, 'url', 'wadoUri', 'wadoURI', 'uri', 'src');
    if (!url) throw new Error(`image ${i + 1} has no url`);
    const sop = (typeof it === 'object' && first(it, 'sopInstanceUID', 'SOPInstanceUID', 'objectUID'))
      || sops[i] || sopFromUrl(url) || `image-${i + 1}`;
    return { url: String(url), sopInstanceUID: String(sop) };
  });

  let labels = first(task, 'labels', 'labelSet', 'classes', 'labelCategories');
  if (!Array.isArray(labels) || labels.length === 0) labels = CHEXPERT_CLASSES;
  labels = labels.map((l) => (typeof l === 'string' ? l : first(l, 'label', 'name'))).filter(Boolean);

  const w = first(task, 'window', 'windowing') || {};
  const center = num(first(w, 'center', 'windowCenter')) ?? num(task.windowCenter);
  const width = num(first(w, 'width', 'windowWidth')) ?? num(task.windowWidth);

  return {
    images,
    labels,
    window: center !== undefined && width > 0 ? { center, width } : null,
    modality: first(task, 'modality', 'Modality') || '',
    studyInstanceUID: first(task, 'studyInstanceUID', 'StudyInstanceUID') || '',
    seriesInstanceUID: first(task, 'seriesInstanceUID', 'SeriesInstanceUID') || '',
    instructions: first(task, 'instructions') || '',
    suggestions: normalizeSuggestions(task.suggestions, labels),
  };
}

/** The pre-label Lambda's model suggestions, kept to the task's labels; null when there are none. */
function normalizeSuggestions(s, labels) {
  if (!s || typeof s !== 'object') return null;
  if (s.status !== 'ok') return { status: 'unavailable', reason: String(s.reason || '') };
  if (s.kind === 'outlines') {
    const outlines = (Array.isArray(s.outlines) ? s.outlines : [])
      .filter((o) => o && labels.includes(o.label) && Array.isArray(o.points) && o.points.length >= 3)
      .map((o, i) => ({ id: `s${i}`, sopInstanceUID: String(o.sopInstanceUID), label: o.label,
        points: o.points.map((p) => [Number(p[0]), Number(p[1])]) }));
    return { status: 'ok', kind: 'outlines', outlines, model: s.model || {} };
  }
  const probabilities = {};
  for (const name of labels) {
    const p = num(s.probabilities?.[name]);
    if (p !== undefined) probabilities[name] = p;
  }
  const suggested = (Array.isArray(s.suggested) ? s.suggested : []).filter((n) => n in probabilities);
  return { status: 'ok', kind: 'classes', probabilities, suggested, model: s.model || {} };
}

/** Make a possibly relative URL absolute against the page (the loader needs a full URL). */
export function absoluteUrl(url) {
  return new URL(url, window.location.href).href;
}
