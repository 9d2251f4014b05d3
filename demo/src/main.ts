import { QueryClient, VueQueryPlugin } from '@tanstack/vue-query';
import { createApp } from 'vue';
import App from './App.vue';
import './style.css';

const queryClient = new QueryClient({
  // Fresh until an event says otherwise: the stream, not polling, keeps the screens current.
  defaultOptions: { queries: { staleTime: Infinity, retry: 1, refetchOnWindowFocus: false } },
});

createApp(App).use(VueQueryPlugin, { queryClient }).mount('#app');
