// A real OpenID provider for the tests (panva/oidc-provider, OpenID Certified), on loopback only.
// Started by tests/identity_provider.py as `node provider.mjs <config.json>`; prints
// `READY <issuer>` once it listens. The config gives the port, the issuer, the API's audience and
// scopes, the private signing keys (JWKS: the Python side rotates them by a restart on the same
// port), the clients and the people:
//   clients:     [{client_id, client_secret, scope, org_id?}]      client credentials grant (API calls)
//   web_clients: [{client_id, redirect_uris, client_secret?}]      authorization code + PKCE (dashboard)
//   accounts:    {<login>: {scopes: [...], org_id?}}               who may sign in, with which scopes
import { readFileSync } from 'node:fs';
import Provider, { interactionPolicy } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const apiScopes = config.scopes.join(' ');
const orgOfClient = Object.fromEntries(config.clients.map((c) => [c.client_id, c.org_id]));

const clients = [
  ...config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: c.scope,
  })),
  ...config.web_clients.map((c) => ({
    client_id: c.client_id,
    ...(c.client_secret ? { client_secret: c.client_secret } : { token_endpoint_auth_method: 'none' }),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: c.redirect_uris,
    scope: `openid ${apiScopes}`,
  })),
];

// Login only, no consent page: what a person is granted is `accounts`' business (loadExistingGrant).
const policy = interactionPolicy.base();
policy.remove('consent');

const provider = new Provider(config.issuer, {
  interactions: { policy },
  clients,
  jwks: config.jwks,
  scopes: ['openid', ...config.scopes], // the API's scopes too: a client's `scope` may name only these
  claims: { openid: ['sub'] }, // no names, no e-mail addresses
  features: {
    devInteractions: { enabled: true }, // the built-in login page: any password, login = account id
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== config.audience) throw new Provider.errors.InvalidTarget();
        return { scope: apiScopes, audience: config.audience, accessTokenFormat: 'jwt',
                 accessTokenTTL: 600, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  // The API's scopes as the account may have them: granted without a consent page.
  async loadExistingGrant(ctx) {
    const accountId = ctx.oidc.session?.accountId;
    if (!accountId) return undefined;
    const existing = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (existing) return ctx.oidc.provider.Grant.find(existing);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId });
    const allowed = (config.accounts[accountId]?.scopes || []).filter((s) => config.scopes.includes(s));
    grant.addOIDCScope(['openid', ...allowed].join(' '));
    if (allowed.length) grant.addResourceScope(config.audience, allowed.join(' '));
    await grant.save();
    return grant;
  },
  async findAccount(_ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
  async extraTokenClaims(_ctx, token) {
    const org = token.accountId ? config.accounts[token.accountId]?.org_id : orgOfClient[token.clientId];
    return org ? { org_id: org } : undefined;
  },
  pkce: { required: () => true },
  ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600, Interaction: 600, Session: 3600, Grant: 3600 },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`READY ${config.issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
