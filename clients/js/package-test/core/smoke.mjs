// Runs the installed package in Node (ESM): the core against the fake hub of tidings/testing,
// and a shipped profile loaded as JSON.
import { createTidings, mappingResolver } from 'tidings';
import { createFakeHub } from 'tidings/testing';
import profile from 'tidings/profiles/azion-console.json' with { type: 'json' };
import { createRequire } from 'node:module';

const hub = createFakeHub();
const tidings = createTidings({ url: hub.url, fetch: hub.fetch, sessionKey: 'smoke', crossTab: false, resolver: mappingResolver(profile) });
const seen = [];
tidings.on('activity', (e) => seen.push(e.invalidate));
tidings.start();
await hub.connected();
hub.activity({ activity_type: 'edited', resource: { type: 'Edge Application', id: 7 } });
await hub.settle();
tidings.stop();
const keys = JSON.stringify(seen);
// The profile makes "Edge Application" an alias of `application`; the detail key of the edit
// is covered by the list key, so the list key alone remains.
if (keys !== '[[["application"]]]') throw new Error(`unexpected keys from the azion-console profile: ${keys}`);
// Node 20.19+ can require() the ESM package (as the guide says).
const required = createRequire(import.meta.url)('tidings');
if (typeof required.createTidings !== 'function') throw new Error('require("tidings") did not give the core');
console.log(`smoke: ${keys}; require() works`);
