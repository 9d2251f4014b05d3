// The session's instance as a ref: null while signed out, replaced when someone else signs in.
import { createTidings, type Tidings } from 'tidings';
import { shallowRef } from 'vue';

export const tidings = shallowRef<Tidings | null>(null);

export function signIn(session: string): void {
  tidings.value?.stop();
  const t = createTidings({ url: '/events/stream', sessionKey: session, credentials: 'same-origin' });
  tidings.value = t;
  t.start();
}

export function signOut(): void {
  tidings.value?.stop();
  tidings.value = null;
}
