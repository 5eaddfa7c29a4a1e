// dicomflow report search: sign in with Cognito, search reports (text + ICD-10-CM codes), open a study,
// see similar images. Vanilla JS; every node built with DOM APIs (see render.js).
import { ApiError, forgetTokens, getConfig, gql, isSignedIn, loadConfig, onLoading, signIn, signOut } from './api.js';
import { imageFilter, isHttpUrl, parseRoute, searchVariables, topCodes, viewerHref } from './helpers.js';
import {
  clear, el, facetButtons, facetChart, fillReport, hitNode, neighbourNode, studyImages,
} from './render.js';

const $ = (id) => document.getElementById(id);

const MENTION = 'finding code description status begin end text';
const HIT = `studyInstanceUID accessionNumber studyDate score snippet mentions { ${MENTION} }`;
const FACET = 'code description kind reports parent mentioned';
const IMAGE = 'sopInstanceUID studyInstanceUID seriesInstanceUID modality viewPosition bodyPart labels thumbnailUrl';

const Q_ME = 'query Me { me { username groups canReadReports } }';
const FILTERS = '$text: String, $codes: [String!], $status: MentionStatus, $since: String, $until: String';
const FILTER_ARGS = 'text: $text, codes: $codes, status: $status, since: $since, until: $until';
const Q_SEARCH = `query Search(${FILTERS}, $first: Int) {
  reports(${FILTER_ARGS}, first: $first) { total nextCursor reports { ${HIT} } }
  facets(${FILTER_ARGS}, first: 30) { ${FACET} }
}`;
const Q_MORE = `query More(${FILTERS}, $first: Int, $after: String) {
  reports(${FILTER_ARGS}, first: $first, after: $after) { total nextCursor reports { ${HIT} } }
}`;
const Q_STUDY = `query Study($uid: ID!) {
  study(uid: $uid) { studyInstanceUID accessionNumber studyDate report { text mentions { ${MENTION} } } images { ${IMAGE} } viewerUrl }
}`;
const Q_SIMILAR = `query Similar($study: ID!, $k: Int, $filter: ImageFilter) {
  similarImages(study: $study, k: $k, filter: $filter) { query model { name version } neighbours { rank score image { ${IMAGE} } } }
}`;

const PAGE = 20;
const SIMILAR_K = 12;

function freshState() {
  return {
    me: null,
    text: '',
    codes: [],
    status: 'any',
    since: '',
    until: '',
    searched: false,
    total: 0,
    nextCursor: null,
    hits: [],
    descriptions: new Map(), // code -> description, so selected codes stay labelled
    counts: new Map(),
  };
}

let state = freshState();
let session = 0; // bumped on sign-in/out: answers for an older session are dropped
let searchSeq = 0;
let studySeq = 0;
let similarSeq = 0;
let currentStudy = null;

// ---------- small UI helpers ----------

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

function clearError() {
  showError('');
}

onLoading((busy) => {
  document.body.classList.toggle('loading', busy);
  const indicator = $('loading');
  indicator.textContent = busy ? 'Loading…' : '';
  indicator.hidden = !busy;
});

function messageOf(err) {
  return (err && err.message) || String(err);
}

/** Handle a failed API call: back to sign-in when the token is refused, else #error. */
function handleError(err) {
  if (err instanceof ApiError && err.code === 'UNAUTHENTICATED') {
    endSession(messageOf(err));
    return;
  }
  showError(messageOf(err));
}

// ---------- views ----------

function showView(name) {
  $('signin-view').hidden = name !== 'signin';
  $('search-view').hidden = name !== 'search';
  $('study-view').hidden = name !== 'study';
  $('session').hidden = name === 'signin';
}

function resetResults() {
  clear($('facets'));
  clear($('facet-chart'));
  clear($('results'));
  $('more').hidden = true;
  clear($('report-text'));
  clear($('study-images'));
  clear($('similar'));
  $('study-title').textContent = 'Study';
  $('study-accession').textContent = '';
  $('open-viewer').hidden = true;
  $('open-viewer').removeAttribute('href');
  $('whoami').textContent = '';
  $('search-text').value = '';
  $('search-status').value = 'any';
  $('search-since').value = '';
  $('search-until').value = '';
  $('similar-modality').value = '';
  $('similar-label').value = '';
  currentStudy = null;
}

/** Forget everything and show the sign-in form (with an optional message). */
function endSession(message = '') {
  forgetTokens();
  session += 1;
  state = freshState();
  resetResults();
  clearError();
  showView('signin');
  $('signin-error').textContent = message;
  $('password').value = '';
  $('username').focus();
}

// ---------- sign-in ----------

async function onSignIn(event) {
  event.preventDefault();
  const username = $('username').value.trim();
  const password = $('password').value;
  $('password').value = '';
  $('signin-error').textContent = '';
  clearError();
  if (!username || !password) {
    $('signin-error').textContent = 'Enter a username and a password.';
    return;
  }
  $('signin-submit').disabled = true;
  try {
    await signIn(username, password);
  } catch (err) {
    $('signin-error').textContent = messageOf(err);
    $('signin-submit').disabled = false;
    $('password').focus();
    return;
  }
  $('signin-submit').disabled = false;
  session += 1;
  const mine = session;
  state = freshState();
  try {
    const data = await gql(Q_ME);
    if (mine !== session) return;
    state.me = data.me;
  } catch (err) {
    if (mine !== session) return;
    if (err instanceof ApiError && err.code === 'UNAUTHENTICATED') {
      endSession(messageOf(err));
    } else {
      forgetTokens();
      showView('signin');
      $('signin-error').textContent = messageOf(err);
    }
    return;
  }
  const groups = Array.isArray(state.me.groups) ? state.me.groups : [];
  $('whoami').textContent = groups.length ? `${state.me.username} (${groups.join(', ')})` : state.me.username;
  const text = $('search-text');
  if (state.me.canReadReports) {
    text.disabled = false;
    text.placeholder = 'search report text, e.g. pleural effusion';
  } else {
    text.disabled = true;
    text.value = '';
    text.placeholder = 'search by ICD-10-CM code (your group cannot search report text)';
  }
  $('username').value = '';
  await route();
  if (mine === session && !$('search-view').hidden) ($('search-text').disabled ? $('search-status') : $('search-text')).focus();
}

async function onSignOut() {
  const done = signOut(); // forgets the tokens at once; the network call is best-effort
  endSession('');
  await done;
}

// ---------- search ----------

function variables() {
  return searchVariables({
    text: state.text, codes: state.codes, status: state.status, since: state.since, until: state.until,
    canReadReports: Boolean(state.me && state.me.canReadReports),
  });
}

function renderResults() {
  const results = $('results');
  clear(results);
  if (!state.hits.length) {
    results.append(el('p', { class: 'empty', text: 'No reports match.' }));
  } else {
    const shown = state.hits.length;
    results.append(el('p', {
      class: 'total', text: `${state.total} report${state.total === 1 ? '' : 's'}${shown < state.total ? ` (showing ${shown})` : ''}`,
    }));
    const list = el('div', { class: 'hits' });
    for (const hit of state.hits) list.append(hitNode(hit));
    results.append(list);
  }
  $('more').hidden = !state.nextCursor;
}

function renderFacets(facets) {
  for (const f of facets) {
    if (f && f.code) {
      if (f.description) state.descriptions.set(f.code, f.description);
      state.counts.set(f.code, f.reports);
    }
  }
  const top = topCodes(facets, 10);
  // keep the selected codes visible (to unselect them) even when they are not in the top 10
  const shownCodes = new Set(top.map((f) => f.code));
  const extra = state.codes.filter((c) => !shownCodes.has(c)).map((c) => {
    const found = facets.find((f) => f && f.code === c);
    return found || { code: c, description: state.descriptions.get(c) || null, kind: 'code', reports: undefined };
  });
  const container = $('facets');
  const focused = document.activeElement && container.contains(document.activeElement)
    ? document.activeElement.getAttribute('data-code') : null;
  clear(container);
  const buttons = facetButtons([...extra, ...top], state.codes);
  if (buttons.length) container.append(...buttons);
  else container.append(el('p', { class: 'empty', text: 'No codes.' }));
  if (focused) {
    const again = buttons.find((b) => b.getAttribute('data-code') === focused);
    if (again) again.focus();
  }
  const chart = $('facet-chart');
  clear(chart);
  if (top.length) chart.append(facetChart(top));
  else chart.append(el('p', { class: 'empty', text: 'No codes to chart.' }));
}

async function runSearch() {
  const mine = session;
  const seq = ++searchSeq;
  clearError();
  try {
    const data = await gql(Q_SEARCH, { ...variables(), first: PAGE });
    if (mine !== session || seq !== searchSeq) return;
    const page = data.reports;
    state.searched = true;
    state.total = page.total;
    state.nextCursor = page.nextCursor || null;
    state.hits = page.reports || [];
    renderFacets(data.facets || []);
    renderResults();
  } catch (err) {
    if (mine !== session || seq !== searchSeq) return;
    handleError(err);
  }
}

async function loadMore() {
  if (!state.nextCursor) return;
  const mine = session;
  const seq = searchSeq; // a new search makes this page stale
  const before = state.hits.length;
  $('more').disabled = true;
  clearError();
  try {
    const data = await gql(Q_MORE, { ...variables(), first: PAGE, after: state.nextCursor });
    if (mine !== session || seq !== searchSeq) return;
    const page = data.reports;
    state.total = page.total;
    state.nextCursor = page.nextCursor || null;
    state.hits = state.hits.concat(page.reports || []);
    renderResults();
    const first = $('results').querySelectorAll('[data-testid="hit"]')[before];
    if (first) first.focus();
  } catch (err) {
    if (mine !== session || seq !== searchSeq) return;
    handleError(err);
  } finally {
    $('more').disabled = false;
  }
}

function readSearchForm() {
  state.text = state.me && state.me.canReadReports ? $('search-text').value : '';
  state.status = $('search-status').value;
  state.since = $('search-since').value;
  state.until = $('search-until').value;
}

function onSearchSubmit(event) {
  event.preventDefault();
  readSearchForm();
  runSearch();
}

function onFacetClick(event) {
  const button = event.target.closest('button[data-testid="facet"]');
  if (!button) return;
  const code = button.getAttribute('data-code');
  state.codes = state.codes.includes(code) ? state.codes.filter((c) => c !== code) : [...state.codes, code];
  button.setAttribute('aria-pressed', state.codes.includes(code) ? 'true' : 'false');
  readSearchForm();
  runSearch();
}

// ---------- study ----------

async function loadStudy(uid) {
  const mine = session;
  const seq = ++studySeq;
  currentStudy = uid;
  clearError();
  $('study-title').textContent = `Study ${uid}`;
  $('study-accession').textContent = '';
  clear($('report-text'));
  clear($('study-images'));
  clear($('similar'));
  const href = viewerHref(getConfig() && getConfig().viewerUrl, uid);
  const viewer = $('open-viewer');
  if (href) {
    viewer.href = href;
    viewer.hidden = false;
  } else {
    viewer.removeAttribute('href');
    viewer.hidden = true;
  }
  loadSimilar();
  try {
    const data = await gql(Q_STUDY, { uid });
    if (mine !== session || seq !== studySeq) return;
    const study = data.study;
    $('study-accession').textContent = (study.accessionNumber ? `Accession ${study.accessionNumber}` : '')
      + (study.studyDate ? ` · study of ${study.studyDate}` : '');
    if (isHttpUrl(study.viewerUrl)) {  // a one-time sign-in link of the viewer, for this user and study
      viewer.href = study.viewerUrl;
      viewer.hidden = false;
    }
    fillReport($('report-text'), study.report);
    $('study-images').append(...studyImages(study.images));
  } catch (err) {
    if (mine !== session || seq !== studySeq) return;
    handleError(err);
  }
}

async function loadSimilar() {
  const uid = currentStudy;
  if (!uid) return;
  const mine = session;
  const seq = ++similarSeq;
  const grid = $('similar');
  const vars = { study: uid, k: SIMILAR_K };
  const filter = imageFilter({ modality: $('similar-modality').value, label: $('similar-label').value });
  if (filter) vars.filter = filter;
  try {
    const data = await gql(Q_SIMILAR, vars);
    if (mine !== session || seq !== similarSeq || uid !== currentStudy) return;
    clear(grid);
    grid.classList.remove('empty');
    const neighbours = data.similarImages.neighbours || [];
    if (!neighbours.length) {
      grid.classList.add('empty');
      grid.append(el('p', { text: 'No similar images.' }));
      return;
    }
    for (const n of neighbours) grid.append(neighbourNode(n));
    const model = data.similarImages.model;
    if (model) grid.append(el('p', { class: 'model', text: `model ${model.name} ${model.version}` }));
  } catch (err) {
    if (mine !== session || seq !== similarSeq || uid !== currentStudy) return;
    if (err instanceof ApiError && err.code === 'BAD_USER_INPUT') {
      clear(grid);
      grid.classList.add('empty');
      grid.append(el('p', { text: messageOf(err) }));
      return;
    }
    clear(grid);
    handleError(err);
  }
}

// ---------- routing ----------

async function route() {
  if (!isSignedIn() || !state.me) return;
  const r = parseRoute(location.hash);
  if (r.name === 'study') {
    showView('study');
    window.scrollTo(0, 0);
    $('study-title').focus();
    await loadStudy(r.uid);
  } else {
    if (r.name === 'signin') history.replaceState(null, '', '#/');
    showView('search');
    if (!state.searched) await runSearch();
  }
}

// ---------- start ----------

async function start() {
  $('loading').hidden = true;
  showView('signin');
  $('signin-form').addEventListener('submit', onSignIn);
  $('signout').addEventListener('click', onSignOut);
  $('search-form').addEventListener('submit', onSearchSubmit);
  $('search-status').addEventListener('change', () => {
    readSearchForm();
    runSearch();
  });
  $('facets').addEventListener('click', onFacetClick);
  $('more').addEventListener('click', loadMore);
  $('similar-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadSimilar();
  });
  $('similar-modality').addEventListener('change', () => loadSimilar());
  window.addEventListener('hashchange', () => {
    clearError();
    route();
  });
  try {
    await loadConfig();
    $('signin-submit').disabled = false;
  } catch (err) {
    showError(`Could not load the page's configuration: ${messageOf(err)}`);
  }
  const link = parseRoute(location.hash);
  if (link.name === 'signin') {
    $('username').value = link.user;
    $('password').focus();
  } else {
    $('username').focus();
  }
}

start();
