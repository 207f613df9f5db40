// A small Node signing proxy for bench/run.sh: what a developer might write in an afternoon
// instead of tokenrelay. Each token request gets a private_key_jwt client assertion and a DPoP
// proof (both ES256, `jose` from npm) and is relayed over a kept-alive mTLS connection.
//
//   node proxy.mjs PORT UPSTREAM_URL CA_PEM CLIENT_CERT_PEM CLIENT_KEY_PEM
//
// Prints "listening <client public JWK>" on stdout when ready (the harness verifies the
// assertions with it); answers 502 when signing or the upstream fails.
import http from 'node:http';
import https from 'node:https';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT, generateKeyPair, exportJWK, calculateJwkThumbprint } from 'jose';

const [port, upstreamUrl, caPath, certPath, keyPath] = process.argv.slice(2);
const upstream = new URL(upstreamUrl);
const agent = new https.Agent({
  keepAlive: true,
  maxSockets: 256,
  ca: readFileSync(caPath),
  cert: readFileSync(certPath),
  key: readFileSync(keyPath),
});

const clientKey = await generateKeyPair('ES256');
const dpopKey = await generateKeyPair('ES256');
const clientJwk = await exportJWK(clientKey.publicKey);
const kid = await calculateJwkThumbprint(clientJwk);
const dpopJwk = await exportJWK(dpopKey.publicKey);
const clientId = 'bench';
const jti = () => randomBytes(16).toString('base64url');

async function sign(path) {
  const now = Math.floor(Date.now() / 1000);
  const htu = new URL(path, upstream).href;
  const assertion = await new SignJWT({ jti: jti() })
    .setProtectedHeader({ alg: 'ES256', kid })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(upstream.origin)
    .setIssuedAt(now)
    .setExpirationTime(now + 60)
    .sign(clientKey.privateKey);
  const proof = await new SignJWT({ jti: jti(), htm: 'POST', htu, iat: now })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: dpopJwk })
    .sign(dpopKey.privateKey);
  return { assertion, proof };
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    try {
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      const { assertion, proof } = await sign(req.url);
      form.set('client_id', clientId);
      form.set('client_assertion_type', 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
      form.set('client_assertion', assertion);
      const body = form.toString();
      const up = https.request(
        {
          agent,
          host: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            'content-length': Buffer.byteLength(body),
            dpop: proof,
          },
        },
        (upRes) => {
          res.writeHead(upRes.statusCode, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', (e) => {
        res.writeHead(502);
        res.end(String(e));
      });
      up.end(body);
    } catch (e) {
      res.writeHead(502);
      res.end(String(e));
    }
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${JSON.stringify(clientJwk)}`));
