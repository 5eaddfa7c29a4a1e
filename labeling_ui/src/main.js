// dicomflow worker viewer: Cornerstone3D stack viewer + label panel inside a Ground Truth <crowd-form>.
//
// The Liquid template provides <div id="dicomflow-viewer" data-task="{task.input as JSON}"> and a
// hidden <input name="annotation"> in the crowd-form. The viewer writes the answer JSON there:
//   {"labels": [...], "rois": [{"label","sopInstanceUID","x","y","width","height"} |
//    {"type":"freehand","label","sopInstanceUID","points":[[x,y],...]} |
//    {"type":"freehand","source":"brush",...}: the pixel-edge outline of a region painted with the brush],
//    "sliceLabels": {"<SOPInstanceUID>": [...]}, "timeSpentSeconds": n}
// (ROIs in image pixel coordinates). window.dicomflowViewer exposes state flags for tests/benchmarks.
import './style.css';

import {
  cache,
  Enums,
  init as coreInit,
  eventTarget,
  imageLoader,
  metaData,
  RenderingEngine,
  utilities as csUtils,
} from '@cornerstonejs/core';
import { init as dicomImageLoaderInit } from '@cornerstonejs/dicom-image-loader';
import {
  addTool,
  annotation as csAnnotation,
  BrushTool,
  Enums as ToolEnums,
  init as toolsInit,
  PanTool,
  PlanarFreehandROITool,
  RectangleROITool,
  segmentation,
  StackScrollTool,
  ToolGroupManager,
  utilities as toolsUtils,
  WindowLevelTool,
  ZoomTool,
} from '@cornerstonejs/tools';

import { maskOutlines } from './masks.js';
import { fillGaps } from './outlines.js';
import { absoluteUrl, normalizeTask } from './task.js';

const VIEWPORT_ID = 'dicomflow-main';
const ENGINE_ID = 'dicomflow-engine';
const TOOLGROUP_ID = 'dicomflow-tools';
const SEGMENTATION_ID = 'dicomflow-painted';
const DEFAULT_PIXEL_SPACING = 1;
const DEFAULT_BRUSH_MM = 3;
// button name -> tool (instance) name in the tool group; the brush and eraser are two BrushTool instances
const TOOLS = {
  windowLevel: WindowLevelTool.toolName,
  zoom: ZoomTool.toolName,
  pan: PanTool.toolName,
  rectangle: RectangleROITool.toolName,
  freehand: PlanarFreehandROITool.toolName,
  brush: 'dicomflowBrush',
  eraser: 'dicomflowEraser',
};
const BRUSHES = { brush: 'FILL_INSIDE_CIRCLE', eraser: 'ERASE_INSIDE_CIRCLE' };

const flags = {
  ready: false, // viewer initialised and the first image is on screen
  imagesLoaded: false, // every image of the task is decoded and cached
  error: null, // a message when something failed ("failed to load image: ...")
  loadedCount: 0,
  sliceIndex: 0,
  sliceCount: 0,
  renderCount: 0,
  timing: { start: performance.now(), firstImage: null, allLoaded: null },
};
window.dicomflowViewer = flags;

const state = {
  task: null,
  imageIds: [],
  sopByImageId: new Map(),
  imageLabels: new Set(),
  sliceLabels: new Map(), // sop -> Set
  roiLabel: '',
  tool: 'windowLevel',
  labelmapIds: [], // one painted labelmap per slice (series only), segment i + 1 = task.labels[i]
  painted: new Map(), // slice index -> [{label, points}]: outlines of what the brush painted there
  viewport: null,
  openedAt: Date.now(),
};

// ---------------------------------------------------------------------------------------------- DOM
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== false && v !== undefined && v !== null) el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const ui = {};

function buildLayout(root, task) {
  root.innerHTML = '';
  const series = task.images.length > 1;
  const toolButtons = [
    ['windowLevel', 'Window/Level'], ['zoom', 'Zoom'], ['pan', 'Pan'],
    ['rectangle', 'Box ROI'], ['freehand', 'Freehand ROI'],
    ...(series ? [['brush', 'Brush'], ['eraser', 'Eraser']] : []),
  ].map(([name, text]) => h('button', {
    type: 'button', class: 'df-tool', 'data-tool': name, onclick: () => selectTool(name),
    disabled: name in BRUSHES, // until every slice is loaded (the painted labelmaps copy their geometry)
  }, text));
  ui.brushSize = h('input', { type: 'number', class: 'df-brush-size', min: '0.5', max: '30', step: '0.5',
    value: String(DEFAULT_BRUSH_MM), 'aria-label': 'brush radius (mm)',
    onchange: (e) => setBrushRadius(Number(e.target.value)) });
  ui.status = h('div', { class: 'df-status', role: 'status', 'aria-live': 'polite' }, 'Loading image…');
  ui.counter = h('span', { class: 'df-counter', 'data-testid': 'slice-counter' }, '');
  ui.element = h('div', { class: 'df-viewport', 'data-testid': 'viewport', tabindex: '0' });
  ui.element.addEventListener('contextmenu', (e) => e.preventDefault());
  ui.roiSelect = h('select', { class: 'df-roi-label', 'aria-label': 'ROI label',
    onchange: (e) => setRoiLabel(e.target.value) },
  task.labels.map((l) => h('option', { value: l }, l)));
  state.roiLabel = task.labels[0];

  const toolbar = h('div', { class: 'df-toolbar' },
    toolButtons,
    h('button', { type: 'button', class: 'df-action', 'data-action': 'invert', onclick: invert }, 'Invert'),
    h('button', { type: 'button', class: 'df-action', 'data-action': 'reset', onclick: reset }, 'Reset'),
    h('button', { type: 'button', class: 'df-action', 'data-action': 'undo-roi', onclick: removeLastRoi },
      'Undo ROI'),
    task.images.length > 1 ? [
      h('button', { type: 'button', class: 'df-action', 'data-action': 'copy-next', onclick: copyToNextSlice },
        'Copy outline to next slice'),
      h('button', { type: 'button', class: 'df-action', 'data-action': 'interpolate', onclick: interpolateOutlines },
        'Interpolate between slices'),
    ] : [],
    h('label', { class: 'df-roi' }, 'ROI label ', ui.roiSelect),
    series ? h('label', { class: 'df-roi' }, 'Brush mm ', ui.brushSize) : [],
    h('span', { class: 'df-spacer' }),
    h('button', { type: 'button', class: 'df-action', 'aria-label': 'previous slice', onclick: () => step(-1) },
      '◀'),
    ui.counter,
    h('button', { type: 'button', class: 'df-action', 'aria-label': 'next slice', onclick: () => step(1) },
      '▶'),
  );

  ui.imageLabels = h('fieldset', { class: 'df-labels', 'data-testid': 'image-labels' },
    h('legend', {}, task.images.length > 1 ? 'Series labels' : 'Image labels'),
    task.labels.map((l) => labelCheckbox(l, 'image')));
  ui.sliceBox = h('fieldset', { class: 'df-labels df-slice-labels', 'data-testid': 'slice-labels' },
    h('legend', {}, 'Labels for this slice'),
    task.labels.map((l) => labelCheckbox(l, 'slice')));
  if (task.images.length < 2) ui.sliceBox.hidden = true;
  ui.suggestions = suggestionBox(task.suggestions);
  ui.summary = h('div', { class: 'df-summary' }, '');
  const info = h('div', { class: 'df-info' },
    [task.modality, task.images.length > 1 ? `${task.images.length} slices` : '1 image'].filter(Boolean).join(' · '));
  const side = h('div', { class: 'df-side' }, info, ui.suggestions, ui.imageLabels, ui.sliceBox, ui.summary);
  root.append(h('div', { class: 'df-root' },
    h('div', { class: 'df-main' }, toolbar, ui.element, ui.status), side));
}

/** The model's suggestions, marked as such and never ticked for the worker (an "Accept" ticks them). */
function suggestionBox(s) {
  if (!s) return h('div', { hidden: true });
  if (s.status !== 'ok') {
    return h('div', { class: 'df-suggestions df-suggestions-off', 'data-testid': 'suggestions' },
      `No model suggestions for this task: ${s.reason || 'the model is unavailable'}`);
  }
  if (s.kind === 'outlines') {
    const model = [s.model?.name, s.model?.version && `v${s.model.version}`].filter(Boolean).join(' ');
    return h('div', { class: 'df-suggestions', 'data-testid': 'suggestions' },
      h('strong', {}, `Model outlines${model ? ` (${model})` : ''} — dashed yellow: check, edit or delete each`),
      h('div', {}, `${s.outlines.length} outline(s) on ${new Set(s.outlines.map((o) => o.sopInstanceUID)).size}`
        + ' slice(s); they count as yours only as you leave them'));
  }
  const named = Object.entries(s.probabilities).sort((a, b) => b[1] - a[1])
    .map(([name, p]) => `${name} ${p.toFixed(2)}`).join(' · ');
  const accept = h('button', { type: 'button', class: 'df-action', 'data-action': 'accept-suggestions',
    onclick: () => {
      for (const name of s.suggested) {
        const cb = ui.imageLabels.querySelector(`input[data-label="${CSS.escape(name)}"]`);
        if (cb && !cb.checked) { cb.checked = true; onLabelToggle(name, 'image', true); }
      }
      state.suggestionAccepted = true;
      updateAnswer();
    } }, s.suggested.length ? `Accept: ${s.suggested.join(', ')}` : 'The model finds nothing');
  const model = [s.model?.name, s.model?.version && `v${s.model.version}`].filter(Boolean).join(' ');
  return h('div', { class: 'df-suggestions', 'data-testid': 'suggestions' },
    h('strong', {}, `Model suggestion${model ? ` (${model})` : ''} — check it, it is not ticked for you`),
    h('div', {}, named), s.suggested.length ? accept : h('div', {}, 'No class reaches the threshold.'));
}

function labelCheckbox(label, scope) {
  const input = h('input', { type: 'checkbox', 'data-label': label, 'data-scope': scope,
    onchange: (e) => onLabelToggle(label, scope, e.target.checked) });
  return h('label', { class: 'df-label' }, input, ' ', label);
}

function setStatus(text, kind = 'info') {
  ui.status.textContent = text;
  ui.status.dataset.kind = kind;
  ui.status.hidden = !text;
}

function fail(message) {
  flags.error = message;
  setStatus(message, 'error');
  console.error(`[dicomflow] ${message}`);
}

// ------------------------------------------------------------------------------------------ labels
function currentSop() {
  return state.sopByImageId.get(state.imageIds[flags.sliceIndex]);
}

function onLabelToggle(label, scope, checked) {
  let set = state.imageLabels;
  if (scope === 'slice') {
    const sop = currentSop();
    if (!state.sliceLabels.has(sop)) state.sliceLabels.set(sop, new Set());
    set = state.sliceLabels.get(sop);
  }
  if (checked) set.add(label);
  else set.delete(label);
  updateAnswer();
}

function refreshSliceCheckboxes() {
  const set = state.sliceLabels.get(currentSop()) || new Set();
  for (const cb of ui.sliceBox.querySelectorAll('input[type=checkbox]')) cb.checked = set.has(cb.dataset.label);
}

/** Labels ticked plus ROIs drawn: an answer needs at least one (a segmentation task has only outlines). */
function labelCount() {
  let n = state.imageLabels.size;
  for (const s of state.sliceLabels.values()) n += s.size;
  return n + (state.viewport ? collectRois().length : 0);
}

// --------------------------------------------------------------------------------------------- ROIs
function toImageXY(imageId, world) {
  const [x, y] = csUtils.worldToImageCoords(imageId, world);
  return [Math.round(x * 100) / 100, Math.round(y * 100) / 100];
}

function collectRois() {
  const rois = [];
  const all = csAnnotation.state.getAllAnnotations() || [];
  for (const a of all) {
    const tool = a.metadata?.toolName;
    const imageId = a.metadata?.referencedImageId;
    if (!imageId || !state.sopByImageId.has(imageId)) continue;
    const sopInstanceUID = state.sopByImageId.get(imageId);
    const label = a.data?.dicomflowLabel || a.data?.label || state.roiLabel;
    if (tool === RectangleROITool.toolName) {
      const pts = (a.data?.handles?.points || []).map((p) => toImageXY(imageId, p));
      if (pts.length < 2) continue;
      const xs = pts.map((p) => p[0]);
      const ys = pts.map((p) => p[1]);
      const x = Math.min(...xs);
      const y = Math.min(...ys);
      rois.push({ label, sopInstanceUID, x, y, width: Math.max(...xs) - x, height: Math.max(...ys) - y });
    } else if (tool === PlanarFreehandROITool.toolName) {
      const poly = a.data?.contour?.polyline || a.data?.polyline || [];
      if (poly.length < 3) continue;
      const roi = { type: 'freehand', label, sopInstanceUID, points: poly.map((p) => toImageXY(imageId, p)) };
      if (a.data?.dicomflowSuggestion) Object.assign(roi, { suggestion: a.data.dicomflowSuggestion,
        edited: Boolean(a.data.dicomflowEdited) });
      rois.push(roi);
    }
  }
  for (const [slice, outlines] of state.painted) {
    const sopInstanceUID = state.sopByImageId.get(state.imageIds[slice]);
    for (const o of outlines) rois.push({ type: 'freehand', source: 'brush', label: o.label, sopInstanceUID,
      points: o.points });
  }
  return rois;
}

// ------------------------------------------------------------------------------------------- brush
/** Paint on the series with Cornerstone's brush: one labelmap per slice, segment ``i + 1`` for label ``i``. */
async function enableBrush() {
  const derived = imageLoader.createAndCacheDerivedLabelmapImages(state.imageIds);
  state.labelmapIds = derived.map((im) => im.imageId);
  const segments = Object.fromEntries(state.task.labels.map((label, i) => [i + 1, { label }]));
  segmentation.addSegmentations([{ segmentationId: SEGMENTATION_ID, representation: {
    type: ToolEnums.SegmentationRepresentations.Labelmap, data: { imageIds: state.labelmapIds } },
  config: { label: 'painted', segments } }]);
  await segmentation.addLabelmapRepresentationToViewport(VIEWPORT_ID, [{ segmentationId: SEGMENTATION_ID }]);
  segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, segmentOf(state.roiLabel));
  setBrushRadius(DEFAULT_BRUSH_MM);
  eventTarget.addEventListener(ToolEnums.Events.SEGMENTATION_DATA_MODIFIED, () => {
    readPainted(flags.sliceIndex); // the stack viewport paints on the slice on screen
    updateAnswer();
  });
  for (const b of document.querySelectorAll('.df-tool')) if (b.dataset.tool in BRUSHES) b.disabled = false;
  flags.brushReady = true;
}

function segmentOf(label) {
  return state.task.labels.indexOf(label) + 1;
}

/** The outlines of what is painted on slice ``slice``, per label, from its labelmap. */
function readPainted(slice) {
  const image = cache.getImage(state.labelmapIds[slice]);
  if (!image) return;
  const pixels = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
  const outlines = [];
  state.task.labels.forEach((label, i) => {
    for (const points of maskOutlines(pixels, image.rows, image.columns, i + 1)) outlines.push({ label, points });
  });
  if (outlines.length) state.painted.set(slice, outlines);
  else state.painted.delete(slice);
}

function setBrushRadius(mm) {
  if (!(mm > 0) || !state.labelmapIds.length) return;
  toolsUtils.segmentation.setBrushSizeForToolGroup(TOOLGROUP_ID, mm);
}

function setRoiLabel(label) {
  state.roiLabel = label;
  ui.roiSelect.value = label;
  if (state.labelmapIds.length) segmentation.segmentIndex.setActiveSegmentIndex(SEGMENTATION_ID, segmentOf(label));
}

/** The freehand outlines on the series, in image coordinates: [{annotation, slice, label, points}]. */
function freehandOutlines() {
  const out = [];
  for (const a of csAnnotation.state.getAllAnnotations() || []) {
    if (a.metadata?.toolName !== PlanarFreehandROITool.toolName) continue;
    const imageId = a.metadata?.referencedImageId;
    const slice = state.imageIds.indexOf(imageId);
    const poly = a.data?.contour?.polyline || a.data?.polyline || [];
    if (slice < 0 || poly.length < 3) continue;
    out.push({ annotation: a, slice, label: a.data?.dicomflowLabel || state.roiLabel,
      points: poly.map((p) => toImageXY(imageId, p)) });
  }
  return out;
}

/** A closed freehand outline (image coordinates) on slice ``slice``, as if the worker had drawn it. */
function addOutline(slice, label, points, how, suggestion = null) {
  const imageId = state.imageIds[slice];
  const cam = state.viewport.getCamera();
  const polyline = points.map((p) => csUtils.imageToWorldCoords(imageId, p));
  const plane = metaData.get('imagePlaneModule', imageId) || {};
  const annotationUID = csUtils.uuidv4();
  csAnnotation.state.addAnnotation({
    annotationUID,
    highlighted: false, invalidated: true, isLocked: false, isVisible: true,
    metadata: { toolName: PlanarFreehandROITool.toolName, referencedImageId: imageId,
      FrameOfReferenceUID: plane.frameOfReferenceUID, viewPlaneNormal: [...cam.viewPlaneNormal],
      viewUp: [...cam.viewUp] },
    data: { handles: { points: [], activeHandleIndex: null,
      textBox: { hasMoved: false, worldPosition: [0, 0, 0],
        worldBoundingBox: { topLeft: [0, 0, 0], topRight: [0, 0, 0], bottomLeft: [0, 0, 0], bottomRight: [0, 0, 0] } } },
    contour: { polyline, closed: true }, label, dicomflowLabel: label, dicomflowMade: how,
    dicomflowSuggestion: suggestion, cachedStats: {} },
  }, ui.element);
  if (suggestion) {
    try {
      csAnnotation.config.style.setAnnotationStyles(annotationUID, { color: 'rgb(255, 200, 0)', lineDash: '4,4' });
    } catch (err) {
      console.warn('[dicomflow] suggestion style not applied', err);
    }
  }
}

/** The model's outlines, placed on their slices as annotations the worker can edit or delete. */
function placeSuggestedOutlines() {
  const s = state.task.suggestions;
  if (s?.status !== 'ok' || s.kind !== 'outlines') return 0;
  const sliceOf = new Map(state.imageIds.map((id, i) => [state.sopByImageId.get(id), i]));
  let placed = 0;
  for (const o of s.outlines) {
    const slice = sliceOf.get(o.sopInstanceUID);
    if (slice === undefined) continue;
    addOutline(slice, o.label, o.points, 'model', o.id);
    placed += 1;
  }
  state.viewport.render();
  updateAnswer();
  return placed;
}

/** Copy the current slice's outlines to the next slice and go there (the worker then adjusts them). */
async function copyToNextSlice() {
  const here = flags.sliceIndex;
  if (here + 1 >= state.imageIds.length) return 0;
  const mine = freehandOutlines().filter((o) => o.slice === here);
  for (const o of mine) addOutline(here + 1, o.label, o.points, 'copied');
  await setSlice(here + 1);
  state.viewport.render();
  updateAnswer();
  return mine.length;
}

/** Outlines given in image coordinates (``[{sopInstanceUID, label, points}]``) placed as if drawn: the scripted
 * annotators of the demo and tests use it; a person draws with the Freehand ROI tool. */
function drawOutlines(rois) {
  const sliceOf = new Map(state.imageIds.map((id, i) => [state.sopByImageId.get(id), i]));
  let drawn = 0;
  for (const r of rois) {
    const slice = sliceOf.get(r.sopInstanceUID);
    if (slice === undefined || !state.task.labels.includes(r.label)) continue;
    addOutline(slice, r.label, r.points, 'drawn');
    drawn += 1;
  }
  state.viewport.render();
  updateAnswer();
  return drawn;
}

/** Fill every slice between two outlined slices of a label with a blend of the two outlines. */
function interpolateOutlines() {
  const byLabel = new Map();
  for (const o of freehandOutlines()) {
    if (!byLabel.has(o.label)) byLabel.set(o.label, new Map());
    const bySlice = byLabel.get(o.label);
    if (!bySlice.has(o.slice)) bySlice.set(o.slice, []);
    bySlice.get(o.slice).push(o.points);
  }
  let added = 0;
  for (const [label, bySlice] of byLabel) {
    for (const [slice, points] of fillGaps(bySlice)) {
      addOutline(slice, label, points, 'interpolated');
      added += 1;
    }
  }
  state.viewport.render();
  updateAnswer();
  setStatus(added ? `${added} outline(s) interpolated: check them slice by slice` : 'Nothing to interpolate: '
    + 'outline a structure on two slices with slices between them');
  return added;
}

function removeLastRoi() {
  const all = csAnnotation.state.getAllAnnotations() || [];
  const last = all[all.length - 1];
  if (last) {
    csAnnotation.state.removeAnnotation(last.annotationUID);
    state.viewport?.render();
    updateAnswer();
  }
}

// ------------------------------------------------------------------------------------------- answer
function getAnswer() {
  const sliceLabels = {};
  for (const [sop, set] of state.sliceLabels) if (set.size) sliceLabels[sop] = [...set];
  const answer = {
    labels: state.task.labels.filter((l) => state.imageLabels.has(l)),
    rois: collectRois(),
    sliceLabels,
    timeSpentSeconds: Math.round((Date.now() - state.openedAt) / 100) / 10,
  };
  const s = state.task.suggestions;
  if (s?.status === 'ok' && s.kind === 'outlines') {
    answer.suggestion = { kind: 'outlines', model: s.model, outlines: s.outlines };
  } else if (s?.status === 'ok') {
    answer.suggestion = { kind: 'classes', suggested: s.suggested, model: s.model,
      accepted: Boolean(state.suggestionAccepted) };
  }
  return answer;
}

function answerInput() {
  let input = document.querySelector('input[name="annotation"]');
  if (!input) {
    input = h('input', { type: 'hidden', name: 'annotation' });
    (document.querySelector('crowd-form') || document.body).append(input);
  }
  return input;
}

function updateAnswer() {
  const answer = getAnswer();
  answerInput().value = JSON.stringify(answer);
  const n = labelCount();
  const submit = document.querySelector('#dicomflow-submit, crowd-button[form-action="submit"]');
  if (submit) {
    if (n > 0) submit.removeAttribute('disabled');
    else submit.setAttribute('disabled', '');
  }
  ui.summary.textContent = n > 0
    ? `${answer.labels.length} label(s), ${answer.rois.length} ROI(s), ${Object.keys(answer.sliceLabels).length} labelled slice(s)`
    : 'Tick a label or outline a structure to submit.';
  flags.labelCount = n;
  return answer;
}

function wireForm() {
  const form = document.querySelector('crowd-form');
  if (!form) return;
  form.addEventListener('submit', (e) => {
    const answer = updateAnswer();
    if (labelCount() === 0) {
      e.preventDefault();
      setStatus('Tick a label or outline a structure before submitting.', 'error');
      return;
    }
    flags.submitted = answer;
  }, true);
}

// ------------------------------------------------------------------------------------------ viewing
function selectTool(name) {
  const tg = ToolGroupManager.getToolGroup(TOOLGROUP_ID);
  if (!tg || !TOOLS[name] || !tg.hasTool(TOOLS[name])) return;
  if (name in BRUSHES && !flags.brushReady) return;
  const primary = [{ mouseButton: ToolEnums.MouseBindings.Primary }];
  for (const [n, toolName] of Object.entries(TOOLS)) {
    if (n !== name && tg.getToolOptions(toolName)) tg.setToolPassive(toolName, { removeAllBindings: primary });
  }
  tg.setToolActive(TOOLS[name], { bindings: primary });
  state.tool = name;
  for (const b of document.querySelectorAll('.df-tool')) b.classList.toggle('df-active', b.dataset.tool === name);
}

function applyWindowHint() {
  const w = state.task.window;
  if (w && state.viewport) {
    state.viewport.setProperties({ voiRange: csUtils.windowLevel.toLowHighRange(w.width, w.center) });
  }
}

function invert() {
  const vp = state.viewport;
  if (!vp) return;
  vp.setProperties({ invert: !vp.getProperties().invert });
  vp.render();
}

function reset() {
  const vp = state.viewport;
  if (!vp) return;
  vp.resetCamera();
  vp.resetProperties();
  applyWindowHint();
  vp.render();
}

async function setSlice(i) {
  const vp = state.viewport;
  if (!vp) return;
  const n = state.imageIds.length;
  const idx = Math.max(0, Math.min(n - 1, i));
  if (idx !== vp.getCurrentImageIdIndex()) await vp.setImageIdIndex(idx);
}

function step(delta) {
  return setSlice(flags.sliceIndex + delta);
}

function onNewSlice() {
  const vp = state.viewport;
  flags.sliceIndex = vp.getCurrentImageIdIndex();
  ui.counter.textContent = `Slice ${flags.sliceIndex + 1} / ${flags.sliceCount}`;
  if (flags.sliceCount > 1) refreshSliceCheckboxes();
}

function onKey(e) {
  if (e.target && ['INPUT', 'SELECT', 'TEXTAREA'].includes(e.target.tagName)) return;
  const delta = { ArrowUp: -1, ArrowLeft: -1, PageUp: -10, ArrowDown: 1, ArrowRight: 1, PageDown: 10 }[e.key];
  if (delta !== undefined) {
    e.preventDefault();
    step(delta);
  } else if (e.key === 'Home') setSlice(0);
  else if (e.key === 'End') setSlice(state.imageIds.length - 1);
}

// PixelSpacing "0\0" (the pydicom-data chest CR) makes the image plane degenerate and renders black:
// default a missing or zero spacing to 1 mm, and a missing position/orientation (projection images) to
// the origin and identity, as the stack viewport itself assumes, so ROI coordinates convert correctly.
let inPlaneProvider = false;
function planeProvider(type, imageId) {
  if (type !== 'imagePlaneModule' || inPlaneProvider) return undefined;
  inPlaneProvider = true;
  try {
    const plane = metaData.get(type, imageId);
    if (!plane) return undefined;
    const bad = (v) => !(Number(v) > 0);
    const fixed = { ...plane };
    if (bad(plane.rowPixelSpacing) || bad(plane.columnPixelSpacing)) {
      fixed.rowPixelSpacing = bad(plane.rowPixelSpacing) ? DEFAULT_PIXEL_SPACING : plane.rowPixelSpacing;
      fixed.columnPixelSpacing = bad(plane.columnPixelSpacing) ? DEFAULT_PIXEL_SPACING : plane.columnPixelSpacing;
      fixed.pixelSpacing = [fixed.rowPixelSpacing, fixed.columnPixelSpacing];
      fixed.usingDefaultValues = true;
    }
    if (!Array.isArray(plane.rowCosines) || !Array.isArray(plane.columnCosines)) {
      fixed.rowCosines = [1, 0, 0];
      fixed.columnCosines = [0, 1, 0];
      fixed.imageOrientationPatient = [1, 0, 0, 0, 1, 0];
      fixed.usingDefaultValues = true;
    }
    if (!Array.isArray(plane.imagePositionPatient)) {
      fixed.imagePositionPatient = [0, 0, 0];
      fixed.usingDefaultValues = true;
    }
    return fixed;
  } finally {
    inPlaneProvider = false;
  }
}

export function describeError(err) {
  if (!err) return 'unknown error';
  if (typeof err === 'string') return err;
  const req = err.request || err.xhr;
  const status = err.status ?? req?.status;
  let body = '';
  const resp = err.response ?? req?.response;
  if (resp instanceof ArrayBuffer) body = new TextDecoder().decode(resp.slice(0, 300));
  else if (typeof resp === 'string') body = resp.slice(0, 300);
  if (status) return `HTTP ${status}${body ? ` ${body.trim()}` : ''}`;
  if (err.error) return describeError(err.error);
  return err.message || String(err);
}

async function prefetchAll() {
  const ids = state.imageIds;
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try {
        await imageLoader.loadAndCacheImage(id);
        flags.loadedCount += 1;
      } catch (err) {
        fail(`failed to load image ${ids.indexOf(id) + 1}: ${describeError(err)}`);
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  if (!flags.error) {
    flags.imagesLoaded = true;
    flags.timing.allLoaded = performance.now();
    if (ids.length > 1) setStatus('');
  }
}

/** Step through every slice, waiting for each to render; returns frames per second. */
async function scrollBenchmark(rounds = 1) {
  const vp = state.viewport;
  const n = state.imageIds.length;
  const rendered = () => new Promise((resolve) => {
    ui.element.addEventListener(Enums.Events.IMAGE_RENDERED, resolve, { once: true });
  });
  await setSlice(0);
  const t0 = performance.now();
  let frames = 0;
  for (let r = 0; r < rounds; r++) {
    for (let i = r === 0 ? 1 : 0; i < n; i++) {
      const done = rendered();
      await vp.setImageIdIndex(i);
      await done;
      frames += 1;
    }
  }
  return { frames, seconds: (performance.now() - t0) / 1000, fps: frames / ((performance.now() - t0) / 1000) };
}

async function start() {
  const root = document.getElementById('dicomflow-viewer');
  if (!root) throw new Error('no #dicomflow-viewer element in the page');
  const source = root.dataset.task ?? document.getElementById('dicomflow-task')?.textContent;
  let task;
  try {
    task = normalizeTask(source);
  } catch (err) {
    root.textContent = `invalid task input: ${err.message}`;
    fail(`invalid task input: ${err.message}`);
    return;
  }
  state.task = task;
  buildLayout(root, task);
  wireForm();
  updateAnswer();
  flags.sliceCount = task.images.length;
  state.imageIds = task.images.map((im) => `wadouri:${absoluteUrl(im.url)}`);
  task.images.forEach((im, i) => state.sopByImageId.set(state.imageIds[i], im.sopInstanceUID));

  await coreInit();
  // The dicom-parser metadata path: v5's dcmjs path rejected concurrent part-10 loads ("meta length tag is
  // malformed") while prefetching a series.
  dicomImageLoaderInit({
    maxWebWorkers: Math.min(2, navigator.hardwareConcurrency || 1),
    useLegacyMetadataProvider: true,
  });
  toolsInit();
  metaData.addProvider(planeProvider, 100000);

  const classes = [WindowLevelTool, ZoomTool, PanTool, RectangleROITool, PlanarFreehandROITool, StackScrollTool];
  for (const T of [...classes, BrushTool]) addTool(T);
  const tg = ToolGroupManager.createToolGroup(TOOLGROUP_ID);
  for (const T of classes) tg.addTool(T.toolName);
  if (task.images.length > 1) {
    for (const [name, strategy] of Object.entries(BRUSHES)) {
      tg.addToolInstance(TOOLS[name], BrushTool.toolName, { activeStrategy: strategy });
    }
  }

  const engine = new RenderingEngine(ENGINE_ID);
  engine.enableElement({ viewportId: VIEWPORT_ID, type: Enums.ViewportType.STACK, element: ui.element });
  tg.addViewport(VIEWPORT_ID, ENGINE_ID);
  tg.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: ToolEnums.MouseBindings.Wheel }] });
  selectTool('windowLevel');
  const vp = engine.getViewport(VIEWPORT_ID);
  state.viewport = vp;

  ui.element.addEventListener(Enums.Events.STACK_NEW_IMAGE, onNewSlice);
  ui.element.addEventListener(Enums.Events.IMAGE_RENDERED, () => {
    flags.renderCount += 1;
    if (flags.timing.firstImage === null) flags.timing.firstImage = performance.now();
  });
  eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_COMPLETED, (evt) => {
    const a = evt.detail?.annotation;
    if (a?.data && !a.data.dicomflowLabel) {
      a.data.dicomflowLabel = state.roiLabel;
      a.data.label = state.roiLabel;
    }
    updateAnswer();
  });
  eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_REMOVED, () => updateAnswer());
  eventTarget.addEventListener(ToolEnums.Events.ANNOTATION_MODIFIED, (evt) => {
    const a = evt.detail?.annotation;
    const change = evt.detail?.changeType;
    const edits = [ToolEnums.ChangeTypes.Interaction, ToolEnums.ChangeTypes.HandlesUpdated];
    if (a?.data?.dicomflowSuggestion && edits.includes(change)) a.data.dicomflowEdited = true;
    updateAnswer();
  });
  document.addEventListener('keydown', onKey);
  new ResizeObserver(() => engine.resize(true, true)).observe(ui.element);

  try {
    await vp.setStack(state.imageIds, 0);
  } catch (err) {
    fail(`failed to load image: ${describeError(err)}`);
    return;
  }
  applyWindowHint();
  vp.render();
  onNewSlice();
  flags.ready = true;
  setStatus(task.images.length > 1 ? `Loading slices…` : '');
  prefetchAll().then(async () => {
    // the model's outlines and the brush's labelmaps need every slice's geometry (image <-> world coordinates)
    if (!flags.error) flags.suggestedOutlines = placeSuggestedOutlines();
    if (task.images.length === 1) flags.imagesLoaded = true;
    else if (!flags.error) {
      await enableBrush().catch((err) => fail(`the brush could not start: ${describeError(err)}`));
    }
  });
}

Object.assign(flags, {
  getAnswer: () => updateAnswer(),
  selectTool,
  setSlice,
  step,
  invert,
  reset,
  scrollBenchmark,
  setRoiLabel,
  setBrushRadius,
  copyToNextSlice,
  interpolateOutlines,
  drawOutlines,
});

function boot() {
  start().catch((err) => fail(`viewer failed to start: ${describeError(err)}`));
}
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
else boot();
