// The README's openid-client v6 recipe: discovery through the proxy's rewritten document
// (a full /.well-known URL skips the issuer-equals-URL check), no client authentication of
// its own (tokenrelay signs), plain http allowed for the loopback proxy.
// Usage: node recipes.mjs http://127.0.0.1:PORT/demo CLIENT_ID
import * as client from 'openid-client';

const [proxy, clientId] = process.argv.slice(2);
const config = await client.discovery(
  new URL(`${proxy}/.well-known/openid-configuration`),
  clientId,
  undefined,
  client.None(),
  { execute: [client.allowInsecureRequests] },
);
const tokens = await client.clientCredentialsGrant(config, { scope: 'read' });
console.log(JSON.stringify({
  token_endpoint: config.serverMetadata().token_endpoint,
  token_type: tokens.token_type,
  verified: tokens.verified ?? null,
}));
