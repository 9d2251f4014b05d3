/** The demo API (`/demo/api/*`, served by `tidings demo`). Same-origin, authenticated by the
 * session cookie the sign-in sets; the same cookie opens the stream. */

export interface User {
  id: string;
  name: string;
  email: string;
  account: string;
  grants: string[];
}

export interface Me {
  user: User;
  account: string;
  session: string;
  /** What the session may see inside the account, as the hub reads it from the session. */
  grants: string[];
}

/** Who may see firewall rules: every rule change is published with this audience. */
export const FIREWALL_GRANT = 'firewall:read';

export interface Rule {
  id: number;
  name: string;
  action: 'allow' | 'deny';
  version: number;
  updated_at: string;
  last_editor: string;
}

export interface Application {
  id: number;
  name: string;
  status: 'active' | 'paused' | 'draft';
  notes: string;
  version: number;
  updated_at: string;
  last_editor: string;
}

export interface ActivityItem {
  activity_type: string;
  description?: string;
  timestamp?: string;
  user?: { name?: string; email?: string };
  resource?: { type?: string; id?: number; name?: string };
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const response = await fetch(`/demo/api${path}`, {
    method,
    credentials: 'same-origin',
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const detail = (await response.json().catch(() => null)) as { error?: { message?: string } } | null;
    throw new HttpError(response.status, detail?.error?.message ?? `HTTP ${response.status}`);
  }
  return (response.status === 204 ? undefined : await response.json()) as T;
}

export const api = {
  users: () => call<{ users: User[] }>('GET', '/users').then((r) => r.users),
  me: () => call<Me>('GET', '/me'),
  login: (user: string) => call<Me>('POST', '/login', { user }),
  logout: () => call<void>('POST', '/logout', {}),
  activity: () => call<{ activity: ActivityItem[] }>('GET', '/activity').then((r) => r.activity),
  list: () => call<{ applications: Application[] }>('GET', '/applications').then((r) => r.applications),
  get: (id: number) => call<Application>('GET', `/applications/${id}`),
  create: (name: string) => call<Application>('POST', '/applications', { name }),
  edit: (id: number, changes: Partial<Pick<Application, 'name' | 'status' | 'notes'>>) => call<Application>('PATCH', `/applications/${id}`, changes),
  remove: (id: number) => call<void>('DELETE', `/applications/${id}`),
  rules: () => call<{ rules: Rule[] }>('GET', '/firewall-rules').then((r) => r.rules),
  editRule: (id: number, changes: Pick<Rule, 'action'>) => call<Rule>('PATCH', `/firewall-rules/${id}`, changes),
};

/** Query keys: the hub's generic mapping turns a change of resource type `application` into
 * `["application"]` (list) and `["application", id]` (detail), and one of `firewall rule` into
 * `["firewall-rule"]` and `["firewall-rule", id]`. */
export const keys = {
  list: ['application'] as const,
  detail: (id: number) => ['application', id] as const,
  rules: ['firewall-rule'] as const,
  activity: ['demo-activity'] as const,
};
