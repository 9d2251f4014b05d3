// The vitest example of docs/browser-sdk.md ("Testing your app"): the fake hub of
// tidings/testing stands in for the hub; the app's query refetches when an event says so.
import { QueryClient, QueryObserver } from '@tanstack/react-query';
import { createTidings } from 'tidings';
import { connectQueryClient } from 'tidings/query';
import { createFakeHub } from 'tidings/testing';
import { afterEach, expect, it, vi } from 'vitest';

const cleanups: Array<() => void> = [];
afterEach(() => cleanups.splice(0).forEach((stop) => stop()));

it('refetches the applications list when a teammate edits one, and survives a drop', async () => {
  vi.useFakeTimers();
  cleanups.push(() => vi.useRealTimers());
  const hub = createFakeHub();
  const tidings = createTidings({ url: hub.url, fetch: hub.fetch, sessionKey: 'test', crossTab: false });
  const queryClient = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });
  const fetchList = vi.fn(async () => ['Billing webhooks']);
  const list = new QueryObserver(queryClient, { queryKey: ['application'], queryFn: fetchList });
  cleanups.push(list.subscribe(() => {}), connectQueryClient(tidings, queryClient), () => tidings.stop());

  tidings.start();
  await hub.connected();
  expect(tidings.status.connected).toBe(true);
  await vi.waitFor(() => expect(fetchList).toHaveBeenCalledTimes(1));

  hub.activity({ activity_type: 'edited', resource: { type: 'application', id: 7 } }, { invalidate: [['application']] });
  await hub.settle();
  await vi.waitFor(() => expect(fetchList).toHaveBeenCalledTimes(2));

  // The network drops; an edit happens meanwhile; the SDK resumes and the list refetches.
  hub.drop();
  await hub.settle();
  expect(tidings.status.connected).toBe(false);
  hub.activity({ activity_type: 'deleted', resource: { type: 'application', id: 8 } }, { invalidate: [['application']], remove: [['application', 8]] });
  await vi.advanceTimersByTimeAsync(tidings.status.stream?.retryInMs ?? 0);
  await hub.connected();
  expect(hub.requests.at(-1)?.lastEventId).toBe('fake-1');
  await vi.advanceTimersByTimeAsync(200);
  await vi.waitFor(() => expect(fetchList).toHaveBeenCalledTimes(3));

  // The session expires: the hub answers 401 and the SDK stops for good.
  hub.refuseNext(401);
  hub.drop();
  await hub.settle();
  await vi.advanceTimersByTimeAsync(tidings.status.stream?.retryInMs ?? 0);
  await hub.settle();
  expect(tidings.status).toMatchObject({ role: 'stopped', error: { status: 401 } });
});
