// A render-function component (no SFC), so plain tsc checks `tidings/vue` under node16 and
// node10 resolution too.
import { useTidings } from 'tidings/vue';
import { defineComponent, h } from 'vue';
import { tidings } from './session.js';

export const Badge = defineComponent({
  setup() {
    const { connectionState, clientId, error } = useTidings(tidings);
    return () => h('span', { 'data-state': connectionState.value, title: clientId.value ?? '' }, error.value?.message ?? connectionState.value);
  },
});
