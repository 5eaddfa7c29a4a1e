// Network calls: config.json, Amazon Cognito (InitiateAuth / GlobalSignOut) and the GraphQL API.
// The tokens live only in this module's memory: never in storage, cookies or the URL.

let config = null;
let tokens = null; // { idToken, accessToken }
let pending = 0;
const loadingListeners = new Set();

/** An error with the API's code (UNAUTHENTICATED, FORBIDDEN, BAD_USER_INPUT, NETWORK, ...) and HTTP status. */
export class ApiError extends Error {
  constructor(message, { code = null, status = 0 } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
  }
}

/** Call fn(busy) whenever requests start or all finish. */
export function onLoading(fn) {
  loadingListeners.add(fn);
}

async function tracked(promise) {
  pending += 1;
  if (pending === 1) loadingListeners.forEach((fn) => fn(true));
  try {
    return await promise;
  } finally {
    pending -= 1;
    if (pending === 0) loadingListeners.forEach((fn) => fn(false));
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** Fetch and check ./config.json (same origin). */
export async function loadConfig() {
  const response = await tracked(fetch('./config.json', { cache: 'no-store', credentials: 'same-origin' }));
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  const body = await readJson(response);
  if (!body || typeof body !== 'object') throw new Error('config.json is not a JSON object');
  const cognito = body.cognito || {};
  if (typeof body.graphqlUrl !== 'string' || !body.graphqlUrl) throw new Error('config.json has no graphqlUrl');
  if (typeof cognito.endpoint !== 'string' || !cognito.endpoint) throw new Error('config.json has no cognito.endpoint');
  if (typeof cognito.clientId !== 'string' || !cognito.clientId) throw new Error('config.json has no cognito.clientId (no user pool deployed yet?)');
  config = {
    graphqlUrl: body.graphqlUrl,
    cognito: { endpoint: cognito.endpoint, region: cognito.region || null, clientId: cognito.clientId },
    viewerUrl: typeof body.viewerUrl === 'string' && body.viewerUrl ? body.viewerUrl : null,
  };
  return config;
}

export function getConfig() {
  return config;
}

export function isSignedIn() {
  return tokens !== null;
}

/** Forget the tokens (no network call). */
export function forgetTokens() {
  tokens = null;
}

const COGNITO_MESSAGES = {
  NotAuthorizedException: 'Incorrect username or password.',
  UserNotFoundException: 'Incorrect username or password.',
  UserNotConfirmedException: 'This account is not confirmed yet; ask your administrator.',
  PasswordResetRequiredException: 'This account must reset its password first; ask your administrator.',
  TooManyRequestsException: 'Too many attempts; wait a moment and try again.',
  LimitExceededException: 'Too many attempts; wait a moment and try again.',
  InvalidParameterException: 'Enter a username and a password.',
};

async function cognitoCall(target, payload) {
  let response;
  try {
    response = await tracked(fetch(config.cognito.endpoint, {
      method: 'POST',
      credentials: 'omit',
      cache: 'no-store',
      headers: {
        'Content-Type': 'application/x-amz-json-1.1',
        'X-Amz-Target': `AWSCognitoIdentityProviderService.${target}`,
      },
      body: JSON.stringify(payload),
    }));
  } catch (err) {
    throw new ApiError(`Could not reach the sign-in service (${err && err.message ? err.message : err}).`, { code: 'NETWORK' });
  }
  const body = await readJson(response);
  if (!response.ok) {
    const type = String((body && (body.__type || body.code)) || '').split('#').pop();
    const message = (body && (body.message || body.Message)) || COGNITO_MESSAGES[type]
      || `Sign-in failed (HTTP ${response.status}).`;
    throw new ApiError(message, { code: type || null, status: response.status });
  }
  return body || {};
}

/** USER_PASSWORD_AUTH sign-in; keeps the IdToken and AccessToken in memory. */
export async function signIn(username, password) {
  if (!config) throw new ApiError('The page has no configuration (config.json).');
  tokens = null;
  const body = await cognitoCall('InitiateAuth', {
    AuthFlow: 'USER_PASSWORD_AUTH',
    ClientId: config.cognito.clientId,
    AuthParameters: { USERNAME: username, PASSWORD: password },
  });
  if (body.ChallengeName) {
    const why = {
      NEW_PASSWORD_REQUIRED: 'This account must set a new password first; ask your administrator.',
      SOFTWARE_TOKEN_MFA: 'This account signs in with a one-time code, which this page cannot ask for yet.',
      MFA_SETUP: 'This account must set up a one-time code first, which this page cannot do yet.',
    }[body.ChallengeName] || `Cognito asks for ${String(body.ChallengeName).slice(0, 40)}, which this page cannot do.`;
    throw new ApiError(why, { code: String(body.ChallengeName) });
  }
  const result = body.AuthenticationResult || {};
  if (typeof result.IdToken !== 'string' || !result.IdToken) {
    throw new ApiError('The sign-in service returned no token.');
  }
  tokens = { idToken: result.IdToken, accessToken: typeof result.AccessToken === 'string' ? result.AccessToken : null };
}

/** Best-effort GlobalSignOut, then forget the tokens whatever happens. */
export async function signOut() {
  const accessToken = tokens && tokens.accessToken;
  tokens = null;
  if (!accessToken || !config) return;
  try {
    await cognitoCall('GlobalSignOut', { AccessToken: accessToken });
  } catch {
    // ignored: the tokens are forgotten here anyway
  }
}

// AppSync names an error by the Lambda resolver's exception (errorType); the local API by extensions.code.
const APPSYNC_CODES = {
  Forbidden: 'FORBIDDEN', Unauthorized: 'UNAUTHENTICATED', UnauthorizedException: 'UNAUTHENTICATED',
  BadQuery: 'BAD_USER_INPUT', ReportIndexError: 'BAD_USER_INPUT', ImageIndexError: 'BAD_USER_INPUT',
};

function codeOf(error) {
  if (error && error.extensions && error.extensions.code) return error.extensions.code;
  return (error && APPSYNC_CODES[error.errorType]) || null;
}

/**
 * POST a GraphQL query with its variables (user input only ever goes in variables) and return data.
 * Throws ApiError: UNAUTHENTICATED (the token is then forgotten), FORBIDDEN, BAD_USER_INPUT, ...
 */
export async function gql(query, variables = {}) {
  if (!config) throw new ApiError('The page has no configuration (config.json).');
  if (!tokens) throw new ApiError('Please sign in.', { code: 'UNAUTHENTICATED', status: 401 });
  let response;
  try {
    response = await tracked(fetch(config.graphqlUrl, {
      method: 'POST',
      cache: 'no-store',
      headers: { 'Content-Type': 'application/json', Authorization: tokens.idToken },
      body: JSON.stringify({ query, variables }),
    }));
  } catch (err) {
    throw new ApiError(`Could not reach the search API (${err && err.message ? err.message : err}).`, { code: 'NETWORK' });
  }
  const body = await readJson(response);
  const errors = body && Array.isArray(body.errors) ? body.errors : [];
  const first = errors[0] || {};
  const code = codeOf(first);
  const message = typeof first.message === 'string' && first.message ? first.message : null;
  if (response.status === 401 || code === 'UNAUTHENTICATED') {
    tokens = null;
    throw new ApiError(message || 'Your session has expired; please sign in again.', { code: 'UNAUTHENTICATED', status: 401 });
  }
  if (response.status === 403 || code === 'FORBIDDEN') {
    throw new ApiError(message || 'Your group may not do this.', { code: 'FORBIDDEN', status: response.status });
  }
  if (errors.length) {
    throw new ApiError(errors.map((e) => (e && e.message) || 'error').join('; '), { code, status: response.status });
  }
  if (!response.ok) throw new ApiError(`The search API answered HTTP ${response.status}.`, { status: response.status });
  if (!body || typeof body.data !== 'object' || body.data === null) {
    throw new ApiError('The search API returned no data.', { status: response.status });
  }
  return body.data;
}
