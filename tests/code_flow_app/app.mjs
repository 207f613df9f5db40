// An OAuth client built on oauth4webapi (pinned in package.json) that runs the authorization
// code flow against tokenrelay's demo AS the way a real app would. Used by
// tests/demo_as_code_flow.rs.
//
// Usage: node app.mjs <discovery URL> <expected issuer> <client_id> <redirect_uri> <refreshes> <replay: yes|no>
//
// 1. Discovery: the proxy's rewritten metadata (route with `rewrite_metadata = true`), checked
//    against the demo AS issuer (processDiscoveryResponse, RFC 8414 §3.3). token_endpoint
//    points at the proxy; authorization_endpoint and jwks_uri at the demo AS.
// 2. /authorize at the demo AS directly, with PKCE S256, state and nonce; the 302 is not
//    followed (fetch redirect: 'manual'): its Location is the callback, checked by
//    validateAuthResponse (state, RFC 9207 iss).
// 3. The code exchange through the proxy (tokenrelay adds client authentication and DPoP;
//    the app's client auth is None()), with the ID token's claims and nonce checked
//    (processAuthorizationCodeResponse) and its signature checked against jwks_uri
//    (validateApplicationLevelSignature).
// 4. <refreshes> refresh_token grants through the proxy, each with the latest refresh token.
// 5. With replay = yes: the first refresh token again, then the latest one, then the code
//    again; each must be refused.
//
// Prints one JSON line on stdout and exits 1 when a step failed (`error` says which and why).
// The output carries tokens: it is test output, never a log.
import * as oauth from 'oauth4webapi';

const [discoveryUrl, issuer, clientId, redirectUri, refreshesArg, replayArg] = process.argv.slice(2);
if (!discoveryUrl || !issuer || !clientId || !redirectUri || !refreshesArg || !['yes', 'no'].includes(replayArg)) {
  console.error('usage: node app.mjs <discovery URL> <expected issuer> <client_id> <redirect_uri> <refreshes> <yes|no>');
  process.exit(2);
}
const refreshes = Number.parseInt(refreshesArg, 10);
const replay = replayArg === 'yes';

const TIMEOUT_MS = 15000;
const options = () => ({ [oauth.allowInsecureRequests]: true, signal: AbortSignal.timeout(TIMEOUT_MS) });

const out = { ok: false };
let step = 'discovery';

function describe(err) {
  return {
    step,
    name: err?.name,
    code: err?.code,
    message: err?.message ?? String(err),
    status: err?.status,
    error: err?.error,
    error_description: err?.error_description,
    cause: err?.cause instanceof Response ? `HTTP ${err.cause.status}` : err?.cause,
  };
}

/** What a token response says, as the test checks it. */
function summary(result) {
  return {
    token_type: result.token_type,
    scope: result.scope,
    expires_in: result.expires_in,
    cnf: result.cnf,
    access_token: result.access_token,
    refresh_token: result.refresh_token,
    id_token: result.id_token,
    verified: result.verified,
  };
}

/** Runs `request` and expects the AS to refuse it with an OAuth error body. */
async function refused(what, request) {
  let result;
  try {
    result = await request();
  } catch (err) {
    if (err instanceof oauth.ResponseBodyError) {
      return { status: err.status, error: err.error, error_description: err.error_description };
    }
    throw err;
  }
  throw new Error(`${what} was accepted: ${JSON.stringify(result)}`);
}

try {
  const response = await fetch(discoveryUrl, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(TIMEOUT_MS) });
  const as = await oauth.processDiscoveryResponse(new URL(issuer), response);
  out.metadata = {
    issuer: as.issuer,
    authorization_endpoint: as.authorization_endpoint,
    token_endpoint: as.token_endpoint,
    jwks_uri: as.jwks_uri,
  };
  const client = { client_id: clientId };
  const clientAuth = oauth.None();

  step = 'authorize';
  const codeVerifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const nonce = oauth.generateRandomNonce();
  const authorizationUrl = new URL(as.authorization_endpoint);
  for (const [name, value] of Object.entries({
    client_id: clientId,
    redirect_uri: redirectUri,
    response_type: 'code',
    scope: 'openid read',
    code_challenge: await oauth.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })) {
    authorizationUrl.searchParams.set(name, value);
  }
  const authorization = await fetch(authorizationUrl, { redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) });
  const location = authorization.headers.get('location');
  out.authorize = { status: authorization.status, location, nonce, state };
  if (authorization.status !== 302 || !location) {
    throw new Error(`/authorize answered ${authorization.status}: ${await authorization.text()}`);
  }
  const callback = new URL(location);
  const expected = new URL(redirectUri);
  if (callback.origin !== expected.origin || callback.pathname !== expected.pathname) {
    throw new Error(`/authorize redirected to ${callback.origin}${callback.pathname}, not ${redirectUri}`);
  }
  const params = oauth.validateAuthResponse(as, client, callback, state);

  step = 'authorization_code';
  const codeResponse = await oauth.authorizationCodeGrantRequest(
    as,
    client,
    clientAuth,
    params,
    redirectUri,
    codeVerifier,
    options(),
  );
  const code = await oauth.processAuthorizationCodeResponse(as, client, codeResponse, {
    expectedNonce: nonce,
    requireIdToken: true,
  });
  step = 'id_token_signature';
  await oauth.validateApplicationLevelSignature(as, codeResponse, options());
  out.code = { ...summary(code), id_token_claims: oauth.getValidatedIdTokenClaims(code), id_token_signature: 'valid' };

  out.refreshes = [];
  let refreshToken = code.refresh_token;
  for (let i = 0; i < refreshes; i++) {
    step = `refresh_token #${i + 1}`;
    if (!refreshToken) {
      throw new Error('no refresh token to use');
    }
    const refreshResponse = await oauth.refreshTokenGrantRequest(as, client, clientAuth, refreshToken, options());
    const refreshed = await oauth.processRefreshTokenResponse(as, client, refreshResponse);
    const entry = { ...summary(refreshed), rotated: refreshed.refresh_token !== refreshToken };
    if (refreshed.id_token) {
      await oauth.validateApplicationLevelSignature(as, refreshResponse, options());
      entry.id_token_claims = oauth.getValidatedIdTokenClaims(refreshed);
      entry.id_token_signature = 'valid';
    }
    out.refreshes.push(entry);
    refreshToken = refreshed.refresh_token;
  }
  out.latest_refresh_token = refreshToken;

  if (replay) {
    step = 'replay first refresh token';
    out.replay_first_refresh_token = await refused('the first (rotated) refresh token', () =>
      oauth
        .refreshTokenGrantRequest(as, client, clientAuth, code.refresh_token, options())
        .then((r) => oauth.processRefreshTokenResponse(as, client, r)),
    );
    step = 'latest refresh token after the replay';
    out.latest_after_replay = await refused('the latest refresh token after a replay', () =>
      oauth
        .refreshTokenGrantRequest(as, client, clientAuth, refreshToken, options())
        .then((r) => oauth.processRefreshTokenResponse(as, client, r)),
    );
    step = 'replay code';
    out.replay_code = await refused('the replayed code', () =>
      oauth
        .authorizationCodeGrantRequest(as, client, clientAuth, params, redirectUri, codeVerifier, options())
        .then((r) => oauth.processAuthorizationCodeResponse(as, client, r, { expectedNonce: nonce })),
    );
  }

  out.ok = true;
} catch (err) {
  out.error = describe(err);
}

process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(out.ok ? 0 : 1);
