// The core as a console without a framework would use it: one instance per session, the
// connection for a badge, activities for a feed, a resolver from a shipped profile.
import { connectionState, createTidings, mappingResolver, type TidingsStatus } from 'tidings';
import profile from 'tidings/profiles/azion-console.json' with { type: 'json' };

export function live(sessionKey: string, onChange: (label: string) => void): () => void {
  const tidings = createTidings({
    url: '/events/stream',
    sessionKey,
    credentials: 'same-origin',
    resolver: mappingResolver(profile),
  });
  const label = (s: TidingsStatus) => `${connectionState(s)}${s.clientId ? ` as ${s.clientId}` : ''}${s.error ? `: ${s.error.message}` : ''}`;
  const offStatus = tidings.on('status', (e) => onChange(label(e.status)));
  const offActivity = tidings.on('activity', (e) => onChange(`${e.data.activity_type ?? 'changed'}: ${e.invalidate.length} keys`));
  tidings.start();
  return () => {
    offStatus();
    offActivity();
    tidings.stop();
  };
}
