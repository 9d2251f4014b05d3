// A console screen: the session's instance comes from state (null while signed out), the
// hook connects it to the query client and tells the badge what every tab knows.
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { useEffect, useState } from 'react';
import { createTidings, type Tidings } from 'tidings';
import { useTidings } from 'tidings/react';

const queryClient = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity } } });

function Badge({ tidings }: { tidings: Tidings | null }) {
  const { connectionState, clientId, lastEvent, error, on } = useTidings(tidings);
  const [feed, setFeed] = useState<string[]>([]);
  useEffect(() => on('activity', (e) => setFeed((f) => [String(e.data.description ?? e.id), ...f].slice(0, 20))), [on]);
  return (
    <p data-state={connectionState}>
      {connectionState} {clientId ?? ''} {error?.message ?? ''} {lastEvent?.type ?? ''} {feed.join(', ')}
    </p>
  );
}

function Applications() {
  const list = useQuery({ queryKey: ['application'], queryFn: async () => (await fetch('/api/applications')).json() as Promise<string[]> });
  return <ul>{(list.data ?? []).map((name) => <li key={name}>{name}</li>)}</ul>;
}

export function App({ session }: { session: string | null }) {
  const [tidings, setTidings] = useState<Tidings | null>(null);
  useEffect(() => {
    if (!session) return undefined;
    const t = createTidings({ url: '/events/stream', sessionKey: session, credentials: 'same-origin' });
    setTidings(t);
    t.start();
    return () => {
      t.stop();
      setTidings(null);
    };
  }, [session]);
  return (
    <QueryClientProvider client={queryClient}>
      <Badge tidings={tidings} />
      <Applications />
    </QueryClientProvider>
  );
}
