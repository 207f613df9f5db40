// Test authorization server for tokenrelay's integration tests.
//
// Wraps panva's oidc-provider (see package.json for the pinned version) and
// records every request it receives so tests can assert on exactly what the
// proxy sent upstream.
//
// Usage: node server.mjs <config.json>
//
// Config (all keys optional except `clients`):
//   {
//     "clients": [ <oidc-provider client metadata, passed through as-is> ],
//     "dpop_nonce": false,       // true: every DPoP proof must carry a server nonce
//                                // "optional": nonces issued/accepted but not required
//     "tls": null,               // { "cert": "leaf-chain.pem", "key": "key.pem", "ca": ["client-root.pem"] }
//     "issuer_host": "127.0.0.1",
//     "rotate_refresh_token": true,
//     "device_flow": false,      // true: device authorization endpoint (RFC 8628) at /device/auth
//     "ciba": false,             // true: CIBA (poll mode) at /backchannel; login_hint is taken
//                                // as the account id, no authentication device is contacted
//     "mtls_endpoint_aliases": false // true: metadata lists RFC 8705 aliases for the
//                                // client-authenticated endpoints, same paths on
//                                // https://localhost:<port> (published only; nothing listens)
//   }
//
// Prints exactly one line on stdout when ready:
//   READY {"port":12345,"issuer":"http://127.0.0.1:12345"}
// Everything else (oidc-provider notices, errors) goes to stderr.
//
// Request record (one per non-control request, in arrival order):
//   { seq, method, path (with query), headers ({lowercase name: string, or
//     array when repeated}), body (utf8), body_b64 (exact bytes),
//     tls_client_cert (PEM|null), status, response (body text),
//     response_headers, error, error_detail (oidc-provider's reason, or null) }
// The raw body is buffered, recorded, then replayed to oidc-provider through a
// fresh http.IncomingMessage on the same socket.
//
// Control routes (loopback test tool, no auth, not recorded):
//   GET  /__received       -> JSON array of request records
//   POST /__reset          -> clears the records
//   POST /__introspect     {"token": "..."} -> stored token payload (404 if unknown)
//   POST /__refresh_token  {"client_id", "scope", "jkt"?, "x5t#S256"?} -> {"refresh_token": "..."}
//
// Set TOKENRELAY_OIDC_WATCH_STDIN=1 to exit when stdin reaches EOF (the Rust
// harness does this so the server dies with the test process).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

// oidc-provider prints NOTICEs with console.info (stdout). Keep stdout for the
// READY line only.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { Provider } = await import('oidc-provider');

const TEST_ACCOUNT = 'test-user';

function die(msg, err) {
  console.error(`[oidc-server] FATAL: ${msg}`);
  if (err) console.error(err);
  process.exit(1);
}

if (process.argv.length < 3) {
  die('usage: node server.mjs <config.json>');
}

let cfg;
try {
  cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
} catch (err) {
  die(`cannot read config ${process.argv[2]}`, err);
}

const clients = Array.isArray(cfg.clients) ? cfg.clients : [];
const dpopNonce = cfg.dpop_nonce ?? false;
const tls = cfg.tls ?? null;
const issuerHost = cfg.issuer_host ?? '127.0.0.1';
const rotateRefreshToken = cfg.rotate_refresh_token ?? true;
const deviceFlow = cfg.device_flow === true;
const ciba = cfg.ciba === true;
const mtlsEndpointAliases = cfg.mtls_endpoint_aliases === true;

// oidc-provider's default endpoint paths, passed explicitly so the metadata extras below
// name the same paths the provider serves.
const ROUTES = {
  authorization: '/auth',
  backchannel_authentication: '/backchannel',
  device_authorization: '/device/auth',
  introspection: '/token/introspection',
  jwks: '/jwks',
  pushed_authorization_request: '/request',
  revocation: '/token/revocation',
  token: '/token',
  userinfo: '/me',
};

if (process.env.TOKENRELAY_OIDC_WATCH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

// ---------------------------------------------------------------------------
// helpers

function peerCertificatePem(socket) {
  if (!socket || typeof socket.getPeerX509Certificate !== 'function') return null;
  const cert = socket.getPeerX509Certificate();
  return cert ? cert.toString() : null;
}

function headersObject(req) {
  const out = {};
  for (const [name, values] of Object.entries(req.headersDistinct)) {
    out[name] = values.length === 1 ? values[0] : values;
  }
  return out;
}

function toBuffer(chunk, encoding) {
  if (chunk === undefined || chunk === null || typeof chunk === 'function') return null;
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk);
  return Buffer.from(String(chunk), typeof encoding === 'string' ? encoding : 'utf8');
}

// RFC 4514-ish DN comparison: order-insensitive set of TYPE=value pairs.
const DN_ALIASES = {
  COMMONNAME: 'CN',
  ORGANIZATIONNAME: 'O',
  ORGANIZATIONALUNITNAME: 'OU',
  COUNTRYNAME: 'C',
  LOCALITYNAME: 'L',
  STATEORPROVINCENAME: 'ST',
  EMAILADDRESS: 'EMAILADDRESS',
  DOMAINCOMPONENT: 'DC',
};

function splitUnescaped(str, separators) {
  const parts = [];
  let cur = '';
  for (let i = 0; i < str.length; i += 1) {
    const c = str[i];
    if (c === '\\' && i + 1 < str.length) {
      cur += c + str[i + 1];
      i += 1;
    } else if (separators.includes(c)) {
      parts.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  parts.push(cur);
  return parts;
}

function normalizeDn(dn) {
  return splitUnescaped(dn, [',', '+', '\n'])
    .map((s) => s.trim())
    .filter(Boolean)
    .map((rdn) => {
      const idx = rdn.indexOf('=');
      if (idx === -1) return rdn;
      let type = rdn.slice(0, idx).trim().toUpperCase();
      type = DN_ALIASES[type] ?? type;
      const value = rdn.slice(idx + 1).trim().replace(/\\(.)/g, '$1');
      return `${type}=${value}`;
    })
    .sort();
}

function dnMatches(actual, expected) {
  const a = normalizeDn(actual);
  const e = normalizeDn(expected);
  return a.length === e.length && a.every((v, i) => v === e[i]);
}

function sanValues(cert, prefix) {
  if (!cert.subjectAltName) return [];
  return cert.subjectAltName
    .split(/,\s*/)
    .filter((entry) => entry.startsWith(`${prefix}:`))
    .map((entry) => entry.slice(prefix.length + 1));
}

function certificateSubjectMatches(ctx, property, expected) {
  const pem = peerCertificatePem(ctx.req.socket);
  if (!pem) return false;
  const cert = new crypto.X509Certificate(pem);
  switch (property) {
    case 'tls_client_auth_subject_dn':
      return dnMatches(cert.subject, expected);
    case 'tls_client_auth_san_dns':
      return sanValues(cert, 'DNS').includes(expected);
    case 'tls_client_auth_san_ip':
      return sanValues(cert, 'IP Address').includes(expected);
    case 'tls_client_auth_san_email':
      return sanValues(cert, 'email').includes(expected);
    case 'tls_client_auth_san_uri':
      return sanValues(cert, 'URI').includes(expected);
    default:
      return false;
  }
}

function generateSigningKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      { ...rsa, kid: 'test-rs256', use: 'sig', alg: 'RS256' },
      { ...ec, kid: 'test-es256', use: 'sig', alg: 'ES256' },
    ],
  };
}

// ---------------------------------------------------------------------------
// server + provider

const records = [];
const recordByRequest = new WeakMap();
let seq = 0;
let provider;
let app;

function sendJson(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

async function findToken(value) {
  for (const model of ['AccessToken', 'ClientCredentials', 'RefreshToken']) {
    const token = await provider[model].find(value, {
      ignoreExpiration: true,
      ignoreSessionBinding: true,
    });
    if (token) return { model, token };
  }
  return null;
}

async function control(req, res, raw) {
  const path = req.url.split('?')[0];
  let body = {};
  if (raw.length) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      sendJson(res, 400, { error: 'invalid_json', error_description: err.message });
      return;
    }
  }

  if (path === '/__received' && req.method === 'GET') {
    sendJson(res, 200, records);
    return;
  }

  if (path === '/__reset' && req.method === 'POST') {
    records.length = 0;
    sendJson(res, 200, { ok: true });
    return;
  }

  if (path === '/__introspect' && req.method === 'POST') {
    if (typeof body.token !== 'string') {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'token (string) required' });
      return;
    }
    const found = await findToken(body.token);
    if (!found) {
      sendJson(res, 404, { error: 'not_found', active: false });
      return;
    }
    const { model, token } = found;
    const payload = {};
    for (const key of token.constructor.IN_PAYLOAD) {
      if (token[key] !== undefined) payload[key] = token[key];
    }
    let cnf;
    if (token.jkt) cnf = { jkt: token.jkt };
    else if (token['x5t#S256']) cnf = { 'x5t#S256': token['x5t#S256'] };
    sendJson(res, 200, {
      ...payload,
      model,
      active: !token.isExpired && !token.consumed,
      client_id: token.clientId,
      sub: token.accountId,
      token_type: token.tokenType,
      ...(cnf ? { cnf } : {}),
    });
    return;
  }

  if (path === '/__refresh_token' && req.method === 'POST') {
    const { client_id: clientId, jkt, scope = 'openid offline_access' } = body;
    const x5t = body['x5t#S256'];
    if (typeof clientId !== 'string') {
      sendJson(res, 400, { error: 'invalid_request', error_description: 'client_id (string) required' });
      return;
    }
    const client = await provider.Client.find(clientId);
    if (!client) {
      sendJson(res, 404, { error: 'client_not_found' });
      return;
    }
    const grant = new provider.Grant({ accountId: TEST_ACCOUNT, clientId });
    grant.addOIDCScope(scope);
    const grantId = await grant.save();
    const refreshToken = new provider.RefreshToken({
      accountId: TEST_ACCOUNT,
      authTime: Math.floor(Date.now() / 1000),
      client,
      expiresWithSession: false,
      grantId,
      gty: 'authorization_code',
      scope,
    });
    if (typeof jkt === 'string' && jkt) refreshToken.jkt = jkt;
    if (typeof x5t === 'string' && x5t) refreshToken['x5t#S256'] = x5t;
    const value = await refreshToken.save();
    sendJson(res, 200, { refresh_token: value, grant_id: grantId });
    return;
  }

  sendJson(res, 404, { error: 'unknown_control_route', path });
}

async function handle(req, res) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const raw = Buffer.concat(chunks);

  if (req.url.startsWith('/__')) {
    await control(req, res, raw);
    return;
  }

  seq += 1;
  const record = {
    seq,
    method: req.method,
    path: req.url,
    headers: headersObject(req),
    body: raw.toString('utf8'),
    body_b64: raw.toString('base64'),
    tls_client_cert: peerCertificatePem(req.socket),
    status: null,
    response: null,
    response_headers: null,
    error: null,
    error_detail: null,
  };
  records.push(record);

  // Capture the response.
  const out = [];
  const origWrite = res.write;
  const origEnd = res.end;
  res.write = function write(chunk, encoding, cb) {
    const buf = toBuffer(chunk, encoding);
    if (buf) out.push(buf);
    return origWrite.call(this, chunk, encoding, cb);
  };
  res.end = function end(chunk, encoding, cb) {
    const buf = toBuffer(chunk, encoding);
    if (buf) out.push(buf);
    record.status = res.statusCode;
    record.response = Buffer.concat(out).toString('utf8');
    record.response_headers = res.getHeaders();
    return origEnd.call(this, chunk, encoding, cb);
  };

  // Replay: a fresh IncomingMessage on the same socket (so TLS peer cert,
  // remote address etc. are unchanged) whose stream yields the buffered body.
  const replay = new http.IncomingMessage(req.socket);
  replay.method = req.method;
  replay.url = req.url;
  replay.httpVersion = req.httpVersion;
  replay.httpVersionMajor = req.httpVersionMajor;
  replay.httpVersionMinor = req.httpVersionMinor;
  replay.rawHeaders = req.rawHeaders;
  replay.headers = req.headers;
  replay.rawTrailers = req.rawTrailers;
  replay.trailers = req.trailers;
  replay.complete = true;
  recordByRequest.set(replay, record);
  if (raw.length) replay.push(raw);
  replay.push(null);

  app(replay, res);
}

function onRequest(req, res) {
  handle(req, res).catch((err) => {
    console.error('[oidc-server] request handling failed:', err);
    if (!res.headersSent) {
      sendJson(res, 500, { error: 'harness_error', error_description: String(err?.message ?? err) });
    } else {
      res.destroy(err);
    }
  });
}

let server;
if (tls) {
  const ca = (tls.ca ?? []).map((p) => fs.readFileSync(p));
  server = https.createServer({
    cert: fs.readFileSync(tls.cert),
    key: fs.readFileSync(tls.key),
    ...(ca.length ? { ca } : {}),
    requestCert: true,
    rejectUnauthorized: false,
  }, onRequest);
} else {
  server = http.createServer(onRequest);
}

server.on('clientError', (err, socket) => {
  console.error(`[oidc-server] client error: ${err.message}`);
  socket.destroy();
});
server.on('tlsClientError', (err) => {
  console.error(`[oidc-server] TLS client error: ${err.message}`);
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});

const { port } = server.address();
const issuer = `${tls ? 'https' : 'http'}://${issuerHost}:${port}`;

// RFC 8705 §5 aliases for the client-authenticated endpoints the provider publishes.
function mtlsAliases() {
  const origin = `https://localhost:${port}`;
  const aliases = {
    token_endpoint: `${origin}${ROUTES.token}`,
    pushed_authorization_request_endpoint: `${origin}${ROUTES.pushed_authorization_request}`,
    introspection_endpoint: `${origin}${ROUTES.introspection}`,
    revocation_endpoint: `${origin}${ROUTES.revocation}`,
  };
  if (deviceFlow) aliases.device_authorization_endpoint = `${origin}${ROUTES.device_authorization}`;
  if (ciba) aliases.backchannel_authentication_endpoint = `${origin}${ROUTES.backchannel_authentication}`;
  return aliases;
}

const configuration = {
  clients,
  routes: ROUTES,
  discovery: {
    claim_types_supported: ['normal'],
    ...(mtlsEndpointAliases ? { mtls_endpoint_aliases: mtlsAliases() } : {}),
  },
  jwks: generateSigningKeys(),
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    async claims() {
      return { sub };
    },
  }),
  scopes: ['openid', 'offline_access', 'read', 'write', 'api'],
  clientAuthMethods: [
    'none',
    'client_secret_basic',
    'client_secret_post',
    'client_secret_jwt',
    'private_key_jwt',
    'tls_client_auth',
    'self_signed_tls_client_auth',
  ],
  enabledJWA: {
    clientAuthSigningAlgValues: [
      'HS256', 'HS384', 'HS512',
      'RS256', 'RS384', 'RS512',
      'PS256', 'PS384', 'PS512',
      'ES256', 'ES384', 'ES512',
      'Ed25519', 'EdDSA',
    ],
    dPoPSigningAlgValues: [
      'RS256', 'RS384', 'RS512',
      'PS256', 'PS384', 'PS512',
      'ES256', 'ES384', 'ES512',
      'Ed25519', 'EdDSA',
    ],
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: deviceFlow },
    ciba: ciba
      ? {
        enabled: true,
        deliveryModes: ['poll'],
        processLoginHint: async (ctx, loginHint) => loginHint,
        processLoginHintToken: async () => {
          throw new Error('login_hint_token is not supported by the test AS');
        },
        validateRequestContext: async () => {},
        verifyUserCode: async () => {},
        triggerAuthenticationDevice: async () => {},
      }
      : { enabled: false },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async () => true },
    dPoP: {
      enabled: true,
      ...(dpopNonce ? { nonceSecret: crypto.randomBytes(32) } : {}),
      requireNonce: () => dpopNonce === true,
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      selfSignedTlsClientAuth: true,
      tlsClientAuth: true,
      // The installed version accepts a PEM string or a crypto.X509Certificate
      // (helpers/certificate_thumbprint.js); return PEM as documented.
      getCertificate: (ctx) => peerCertificatePem(ctx.req.socket) ?? undefined,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches,
    },
  },
  rotateRefreshToken: () => rotateRefreshToken,
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    ClientCredentials: 600,
    DeviceCode: 600,
    Grant: 14 * 24 * 3600,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 14 * 24 * 3600,
    Session: 14 * 24 * 3600,
  },
};

try {
  provider = new Provider(issuer, configuration);
} catch (err) {
  die('invalid provider configuration', err);
}

const errorEvents = [
  'grant.error',
  'introspection.error',
  'revocation.error',
  'userinfo.error',
  'jwks.error',
  'discovery.error',
  'authorization.error',
  'backchannel.error',
  'pushed_authorization_request.error',
  'device_authorization.error',
  'registration_create.error',
  'registration_read.error',
  'registration_update.error',
  'registration_delete.error',
  'end_session.error',
];
function noteError(ctx, err) {
  const record = ctx?.req ? recordByRequest.get(ctx.req) : undefined;
  if (record) {
    record.error = err?.message ?? String(err);
    record.error_detail = err?.error_detail ?? null;
  }
}

for (const event of errorEvents) {
  provider.on(event, (ctx, err) => {
    noteError(ctx, err);
    console.error(
      `[oidc-server] ${event} ${ctx?.method} ${ctx?.path}: ${err?.message}`
      + `${err?.error_description ? ` (${err.error_description})` : ''}`
      + `${err?.error_detail ? ` detail: ${err.error_detail}` : ''}`
      + `${err?.cause ? ` cause: ${err.cause?.message ?? err.cause}` : ''}`,
    );
  });
}
provider.on('server_error', (ctx, err) => {
  noteError(ctx, err);
  console.error(`[oidc-server] server_error ${ctx?.method} ${ctx?.path}: ${err?.message}`
    + `${err?.error_detail ? ` detail: ${err.error_detail}` : ''}`);
  console.error(err);
});

// Validate static client metadata now, so a bad test config fails at start-up
// with a readable message instead of as a server_error on the first request.
for (const metadata of clients) {
  try {
    await provider.Client.find(metadata.client_id);
  } catch (err) {
    die(`invalid client metadata for ${metadata.client_id}: ${err.message}`
      + `${err.error_description ? ` (${err.error_description})` : ''}`);
  }
}

app = provider.callback();

process.stdout.write(`READY ${JSON.stringify({ port, issuer })}\n`);
