// An OAuth client built on oauth4webapi (pinned in package.json) that knows tokenrelay only
// through one URL: the discovery document the proxy serves for a route with
// `rewrite_metadata = true`. Used by tests/interop_issuer.rs.
//
// Usage: node app.mjs <discovery URL> <expected issuer> <client_id> <redirect_uri>
//
// It reads the metadata from the proxy, checks its `issuer` against the real AS issuer
// (processDiscoveryResponse, RFC 8414 §3.3), then calls the endpoints that metadata names:
// client_credentials at token_endpoint, a pushed authorization request (RFC 9126) at
// pushed_authorization_request_endpoint, and introspection (RFC 7662) of the token it got.
// Client authentication is None(): only `client_id` is sent, tokenrelay signs. The URLs are
// http://, so every call passes allowInsecureRequests.
//
// Prints one JSON line on stdout: { ok, metadata, token, par, introspection, error? }, and
// exits 1 when a step failed (the `error` member says which and why).
import * as oauth from 'oauth4webapi';

const [discoveryUrl, issuer, clientId, redirectUri] = process.argv.slice(2);
if (!discoveryUrl || !issuer || !clientId || !redirectUri) {
  console.error('usage: node app.mjs <discovery URL> <expected issuer> <client_id> <redirect_uri>');
  process.exit(2);
}

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
    // ResponseBodyError / AuthorizationResponseError carry the AS's answer.
    status: err?.status,
    error: err?.error,
    error_description: err?.error_description,
    cause: err?.cause instanceof Response ? `HTTP ${err.cause.status}` : err?.cause,
  };
}

try {
  const response = await fetch(discoveryUrl, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(TIMEOUT_MS) });
  const as = await oauth.processDiscoveryResponse(new URL(issuer), response);
  out.metadata = {
    issuer: as.issuer,
    token_endpoint: as.token_endpoint,
    pushed_authorization_request_endpoint: as.pushed_authorization_request_endpoint,
    introspection_endpoint: as.introspection_endpoint,
  };
  const client = { client_id: clientId };
  const clientAuth = oauth.None();

  step = 'client_credentials';
  const tokenResponse = await oauth.clientCredentialsGrantRequest(
    as,
    client,
    clientAuth,
    new URLSearchParams({ scope: 'read' }),
    options(),
  );
  const token = await oauth.processClientCredentialsResponse(as, client, tokenResponse);
  out.token = { token_type: token.token_type, access_token: token.access_token, expires_in: token.expires_in };

  step = 'pushed_authorization_request';
  const verifier = oauth.generateRandomCodeVerifier();
  const parResponse = await oauth.pushedAuthorizationRequest(
    as,
    client,
    clientAuth,
    new URLSearchParams({
      response_type: 'code',
      redirect_uri: redirectUri,
      scope: 'openid',
      code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state: oauth.generateRandomState(),
    }),
    options(),
  );
  const par = await oauth.processPushedAuthorizationResponse(as, client, parResponse);
  out.par = { request_uri: par.request_uri, expires_in: par.expires_in };

  step = 'introspection';
  const introspectionResponse = await oauth.introspectionRequest(as, client, clientAuth, token.access_token, options());
  const introspection = await oauth.processIntrospectionResponse(as, client, introspectionResponse);
  out.introspection = {
    active: introspection.active,
    client_id: introspection.client_id,
    token_type: introspection.token_type,
    cnf: introspection.cnf,
  };

  out.ok = true;
} catch (err) {
  out.error = describe(err);
}

process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(out.ok ? 0 : 1);
