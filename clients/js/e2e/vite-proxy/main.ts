// Signs in through the proxied demo API, then opens the stream through the proxy.
import { createTidings, type TidingsEvent } from 'tidings';

const w = window as unknown as { events: TidingsEvent[]; tidingsStatus: () => unknown; ready: Promise<void> };
w.events = [];
w.ready = (async () => {
  const login = await fetch('/demo/api/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"user":"alice"}' });
  const { session } = (await login.json()) as { session: string };
  const tidings = createTidings({ url: '/events/stream', sessionKey: session, credentials: 'same-origin' });
  tidings.subscribe((event) => event.type !== 'status' && w.events.push(event));
  w.tidingsStatus = () => tidings.status;
  tidings.start();
})();
