//! The retained-history window, in memory: per account, the events a resuming stream can
//! still be replayed and how far the account was trimmed, under the `[history]` bounds.
//!
//! The memory engine keeps its whole history here; the durable engine keeps here a copy of
//! what its data file retains, so that opening a stream never reads the disk. Both answer
//! [`History::open`], so the rules of the window (trimming by count and age, what counts as
//! trimmed, the replay budget) are written once. The same goes for idempotency keys: which
//! events of a publish are duplicates is [`History::admit`], and a key is forgotten with its
//! event (the key index itself is [`super::idempotency`]). The Redis engine keeps its window
//! inside Redis (and the key rule inside its publish script) but shares [`new_epoch`] and
//! [`now_ms`] from here.
//!
//! What it does not do: assign ids durably, talk to a store, or deliver to the fan-out. The
//! engine that owns a `History` does those, under the same lock, which is what keeps the
//! replay/live boundary exact.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tidings_protocol::{Audience, EventId, Viewer};
use tidings_protocol::resume::{HistoryWindow, LastEventId, decide};

use super::idempotency::KeyMemory;
use super::{Accepted, NewEvent, Opening, StoredFrame};
use crate::config::HistoryConfig;

/// A fresh epoch: 32 random bits keep ids short, and never 0. Two histories drawing the same
/// epoch is a 1-in-4-billion event, and even then an old id must also hit a retained seq to
/// be misread.
pub fn new_epoch() -> u64 {
    u64::from(rand::random::<u32>()) | 1
}

/// Milliseconds since the Unix epoch: the clock stored with each event. Wall-clock rather
/// than `Instant`, because a durable or shared history must mean the same after a restart and
/// on every node.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Events stored before this time (ms) are past `max_age`.
fn oldest_kept_ms(now_ms: u64, max_age: Duration) -> u64 {
    now_ms.saturating_sub(max_age.as_millis() as u64)
}

/// One retained event. Per-event facts that history rules need (who may see it, a publisher's
/// idempotency key) belong here, beside the frame.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it was stored, in ms since the Unix epoch (see [`now_ms`]).
    pub at_ms: u64,
    /// Its seq and its frame, id included, ready to write.
    pub frame: StoredFrame,
    /// Who in the account may see it (`None`: everyone); replay honours it as delivery does.
    pub audience: Option<Arc<Audience>>,
    /// The idempotency key it was published with: while the event is retained, the key
    /// names it ([`History::admit`]).
    pub key: Option<Arc<str>>,
}

/// The events of one account still retained, oldest first.
#[derive(Debug, Default)]
struct AccountLog {
    entries: VecDeque<Entry>,
    /// Every event of this account with a seq at or below this may have been dropped. An
    /// empty log keeps this: it is what proves a gap later.
    trimmed_through: u64,
}

impl AccountLog {
    /// Where a trim must cut (the new `trimmed_through`) once `incoming` `(seq, at_ms)` are
    /// appended, so that at most `max_events` remain and none stored before `oldest_ms`;
    /// `None` if nothing goes.
    fn cut(&self, incoming: &[(u64, u64)], max_events: usize, oldest_ms: u64) -> Option<u64> {
        let held = self.entries.iter().map(|e| (e.frame.seq, e.at_ms));
        let all = || held.clone().chain(incoming.iter().copied());
        let total = self.entries.len() + incoming.len();
        let by_count = total.checked_sub(max_events + 1).and_then(|k| all().nth(k)).map(|(seq, _)| seq);
        let by_age = all().take_while(|(_, at)| *at < oldest_ms).last().map(|(seq, _)| seq);
        by_count.max(by_age).filter(|&cut| cut > self.trimmed_through)
    }

    /// Drops every event at or below `through` and records it as trimmed.
    fn apply_cut(&mut self, through: u64) {
        while self.entries.front().is_some_and(|e| e.frame.seq <= through) {
            self.entries.pop_front();
        }
        self.trimmed_through = self.trimmed_through.max(through);
        if self.entries.is_empty() {
            // Give the buffer back: an idle account costs only its `trimmed_through`.
            self.entries = VecDeque::new();
        }
    }

    /// `trimmed_through` as of now: events past their age that are still held (age trimming
    /// runs on the maintenance tick) count as trimmed, exactly as if the tick had run.
    fn trimmed_through_at(&self, oldest_ms: u64) -> u64 {
        let aged = self.entries.iter().take_while(|e| e.at_ms < oldest_ms).last().map(|e| e.frame.seq);
        aged.unwrap_or(0).max(self.trimmed_through)
    }
}

/// The retained window of one history (one epoch): every account's log and the head.
#[derive(Debug)]
pub struct History {
    epoch: u64,
    /// The highest seq assigned in this history, across accounts.
    head: u64,
    bounds: HistoryConfig,
    accounts: HashMap<Arc<str>, AccountLog>,
    /// The keys of the retained events; a cut forgets the keys of the events it drops.
    keys: KeyMemory,
}

impl History {
    /// An empty window of history `epoch` whose last assigned seq is `head`.
    pub fn new(epoch: u64, head: u64, bounds: &HistoryConfig) -> Self {
        Self { epoch, head, bounds: bounds.clone(), accounts: HashMap::new(), keys: KeyMemory::default() }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// Assigns the next id (for a history that assigns ids as it appends).
    pub fn next_id(&mut self) -> EventId {
        self.head += 1;
        EventId::new(self.epoch, self.head)
    }

    /// Records `head` as assigned (for a history whose ids were assigned and committed
    /// elsewhere first).
    pub fn set_head(&mut self, head: u64) {
        self.head = self.head.max(head);
    }

    /// Appends an event to its account's log (and its key to the account's keys); seqs of
    /// one account must increase.
    pub fn push(&mut self, account: &Arc<str>, entry: Entry) {
        let log = self.accounts.entry(account.clone()).or_default();
        debug_assert!(log.entries.back().is_none_or(|last| last.frame.seq < entry.frame.seq));
        if let Some(key) = &entry.key {
            self.keys.insert(account, key, entry.frame.seq);
        }
        log.entries.push_back(entry);
    }

    /// The idempotency rule, for events about to be published together (one batch, or a
    /// group of batches committed at once) at `at_ms`, before anything is stored: an event is
    /// a duplicate when its key names an event of its account that is still in the window a
    /// resuming client sees as of `at_ms` (not trimmed, not past its age even if upkeep has
    /// not trimmed it yet), or an earlier event of the same group. A duplicate is answered
    /// with that event's id and stored nowhere; every other event gets the next seq after the
    /// head, in order. A key whose event has left the window is new again.
    ///
    /// Nothing changes here: the engine stores the new events under the ids given, then
    /// [`History::push`]es them with their keys.
    pub fn admit<'e>(&self, events: impl IntoIterator<Item = &'e NewEvent>, at_ms: u64) -> Vec<Accepted> {
        let oldest = oldest_kept_ms(at_ms, self.bounds.max_age);
        let mut fresh: HashMap<(&Arc<str>, &Arc<str>), u64> = HashMap::new();
        let mut head = self.head;
        let mut accepted = Vec::new();
        for ev in events {
            let known = ev.key.as_ref().and_then(|key| {
                let retained = self.keys.get(&ev.account, key).filter(|&seq| {
                    self.accounts.get(&ev.account).is_some_and(|log| seq > log.trimmed_through_at(oldest))
                });
                retained.or_else(|| fresh.get(&(&ev.account, key)).copied())
            });
            if let Some(seq) = known {
                accepted.push(Accepted { id: EventId::new(self.epoch, seq), duplicate: true });
                continue;
            }
            head += 1;
            if let Some(key) = &ev.key {
                fresh.insert((&ev.account, key), head);
            }
            accepted.push(Accepted { id: EventId::new(self.epoch, head), duplicate: false });
        }
        accepted
    }

    /// Records how far an account was trimmed before this window was loaded.
    pub fn restore_trimmed(&mut self, account: &Arc<str>, through: u64) {
        let log = self.accounts.entry(account.clone()).or_default();
        log.trimmed_through = log.trimmed_through.max(through);
    }

    /// The cuts that appending `incoming` (`(account, seq)`, stored at `at_ms`) will require,
    /// one `(account, trimmed_through)` per account touched that must be trimmed. Nothing
    /// changes until [`History::apply_cut`]: a store commits the cuts first.
    pub fn cuts_after<'a>(&self, incoming: impl IntoIterator<Item = (&'a Arc<str>, u64)>, at_ms: u64) -> Vec<(Arc<str>, u64)> {
        let oldest = oldest_kept_ms(at_ms, self.bounds.max_age);
        let mut by_account: HashMap<&Arc<str>, Vec<(u64, u64)>> = HashMap::new();
        for (account, seq) in incoming {
            by_account.entry(account).or_default().push((seq, at_ms));
        }
        let empty = AccountLog::default();
        by_account
            .into_iter()
            .filter_map(|(account, new)| {
                let log = self.accounts.get(account).unwrap_or(&empty);
                log.cut(&new, self.bounds.max_events, oldest).map(|cut| (account.clone(), cut))
            })
            .collect()
    }

    /// Every cut due now, by count and age, across all accounts (periodic upkeep). Nothing
    /// changes until [`History::apply_cut`].
    pub fn cuts_due(&self, now_ms: u64) -> Vec<(Arc<str>, u64)> {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        self.accounts.iter().filter_map(|(a, log)| log.cut(&[], self.bounds.max_events, oldest).map(|c| (a.clone(), c))).collect()
    }

    /// Drops every event of `account` at or below `through`, and forgets their keys.
    pub fn apply_cut(&mut self, account: &Arc<str>, through: u64) {
        self.accounts.entry(account.clone()).or_default().apply_cut(through);
        self.keys.forget_through(account, through);
    }

    /// Trims one account by count and age at once (a history that needs no store to agree).
    pub fn trim(&mut self, account: &Arc<str>, now_ms: u64) {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        let cut = self.accounts.get(account).and_then(|log| log.cut(&[], self.bounds.max_events, oldest));
        if let Some(through) = cut {
            self.apply_cut(account, through);
        }
    }

    /// Trims every account by count and age at once.
    pub fn trim_all(&mut self, now_ms: u64) {
        for (account, through) in self.cuts_due(now_ms) {
            self.apply_cut(&account, through);
        }
    }

    /// Events retained across all accounts.
    pub fn retained_events(&self) -> usize {
        self.accounts.values().map(|l| l.entries.len()).sum()
    }

    /// How a stream of `account` starts from `last_event_id`, as of `now_ms`: the decision,
    /// and for a replay every retained event after the client's id that `viewer` may see,
    /// within the replay budget (which counts only those).
    pub fn open(&self, account: &str, last_event_id: LastEventId, viewer: &Viewer, now_ms: u64) -> Opening {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        let log = self.accounts.get(account);
        let trimmed_through = log.map_or(0, |l| l.trimmed_through_at(oldest));
        let window = HistoryWindow { epoch: self.epoch, head: self.head, trimmed_through };
        let decision = decide(last_event_id, &window);
        let visible = log.into_iter().flat_map(|l| l.entries.iter()).filter(|e| viewer.sees(e.audience.as_deref()));
        let retained = visible.map(|e| &e.frame);
        Opening::from_retained(self.epoch, self.head, decision, retained, self.bounds.replay_max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidings_protocol::frame::ResyncReason;
    use tidings_protocol::resume::ResumeDecision;

    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn entry(seq: u64, at_ms: u64) -> Entry {
        Entry { at_ms, frame: StoredFrame { seq, bytes: Bytes::from(format!("frame {seq}\n\n")) }, audience: None, key: None }
    }

    fn anyone() -> Viewer {
        Viewer::new("u".into(), "s".into(), Arc::default())
    }

    fn bounds(max_events: usize) -> HistoryConfig {
        HistoryConfig { max_events, max_age: Duration::from_millis(HOUR_MS), ..HistoryConfig::default() }
    }

    /// The decision and the replayed seqs of a resume from `seq` at `now`.
    fn resume(h: &History, account: &str, seq: u64, now: u64) -> (ResumeDecision, Vec<u64>) {
        let o = h.open(account, LastEventId::Id(EventId::new(h.epoch(), seq)), &anyone(), now);
        (o.decision, o.replay.iter().map(|f| f.seq).collect())
    }

    #[test]
    fn cuts_keep_the_newest_events_by_count_and_age() {
        let mut log = AccountLog::default();
        for seq in 1..=4u64 {
            log.entries.push_back(entry(seq, seq * 10));
        }
        assert_eq!(log.cut(&[], 4, 0), None);
        assert_eq!(log.cut(&[(5, 50)], 4, 0), Some(1));
        assert_eq!(log.cut(&[(5, 50), (6, 60)], 1, 0), Some(5));
        assert_eq!(log.cut(&[], 10, 25), Some(2), "events older than the cut-off go");
        log.apply_cut(2);
        assert_eq!((log.trimmed_through, log.entries.len()), (2, 2));
        assert_eq!(log.cut(&[], 10, 25), None, "nothing below trimmed_through is cut again");
    }

    #[test]
    fn a_trimmed_account_answers_history_trimmed_and_replays_the_rest() {
        let a: Arc<str> = "a".into();
        let mut h = History::new(0xab, 0, &bounds(3));
        for _ in 0..5 {
            let id = h.next_id();
            h.push(&a, entry(id.seq, 1_000));
            h.trim(&a, 1_000);
        }
        assert_eq!(resume(&h, "a", 1, 1_000).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "a", 2, 1_000), (ResumeDecision::Replay { after: 2 }, vec![3, 4, 5]));
        assert_eq!(resume(&h, "b", 5, 1_000), (ResumeDecision::Replay { after: 5 }, vec![]), "an account with no events");
        assert_eq!(resume(&h, "a", 6, 1_000).0, ResumeDecision::Resync(ResyncReason::UnknownId));
        let o = h.open("a", LastEventId::Id(EventId::new(0xab, 2)), &anyone(), 1_000);
        assert_eq!((o.position, o.live_from()), (EventId::new(0xab, 2), EventId::new(0xab, 5)), "connected at the client's id, live after the replay");
        let o = h.open("a", LastEventId::None, &anyone(), 1_000);
        assert_eq!((o.position, o.live_from()), (EventId::new(0xab, 5), EventId::new(0xab, 5)));
    }

    #[test]
    fn aged_events_count_as_trimmed_before_the_tick_drops_them() {
        let a: Arc<str> = "a".into();
        let mut h = History::new(1, 0, &bounds(100));
        for at in [0, 10, HOUR_MS + 5] {
            let id = h.next_id();
            h.push(&a, entry(id.seq, at));
        }
        let later = HOUR_MS + 20;
        assert_eq!(resume(&h, "a", 1, later).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "a", 2, later), (ResumeDecision::Replay { after: 2 }, vec![3]));
        let before = resume(&h, "a", 2, later);
        h.trim_all(later);
        assert_eq!(h.retained_events(), 1);
        assert_eq!(resume(&h, "a", 2, later), before, "the tick changes nothing a stream can see");
    }

    #[test]
    fn cuts_after_a_batch_are_computed_before_anything_changes() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let mut h = History::new(1, 0, &bounds(2));
        h.push(&a, entry(1, 0));
        h.push(&a, entry(2, 0));
        let cuts = h.cuts_after([(&a, 3), (&b, 4)], 0);
        assert_eq!(cuts, vec![(a.clone(), 1)], "only the account over its bound is cut");
        assert_eq!(h.retained_events(), 2, "nothing is dropped until the cut is applied");
        h.apply_cut(&a, 1);
        assert_eq!(h.retained_events(), 1);
    }

    #[test]
    fn a_replay_over_the_budget_becomes_resync_replay_too_large() {
        let a: Arc<str> = "a".into();
        let frame_len = entry(1, 0).frame.bytes.len();
        let config = HistoryConfig { replay_max_bytes: frame_len * 2, ..bounds(100) };
        let mut h = History::new(1, 0, &config);
        for _ in 0..3 {
            let id = h.next_id();
            h.push(&a, entry(id.seq, 0));
        }
        assert_eq!(resume(&h, "a", 1, 0), (ResumeDecision::Replay { after: 1 }, vec![2, 3]));
        let o = h.open("a", LastEventId::Id(EventId::new(1, 0)), &anyone(), 0);
        assert_eq!((o.decision, o.position), (ResumeDecision::Resync(ResyncReason::ReplayTooLarge), EventId::new(1, 3)));
    }

    fn keyed(account: &str, key: &str) -> NewEvent {
        NewEvent { account: account.into(), payload: "{}".into(), audience: None, key: Some(key.into()) }
    }

    /// Publishes `events` at `at_ms` as the engines do (admit, then push the new ones and
    /// trim); returns `(seq, duplicate)` per event.
    fn publish(h: &mut History, events: &[NewEvent], at_ms: u64) -> Vec<(u64, bool)> {
        let accepted = h.admit(events, at_ms);
        for (ev, a) in events.iter().zip(&accepted) {
            if !a.duplicate {
                assert_eq!(h.next_id(), a.id, "new events take the next seqs in order");
                h.push(&ev.account, Entry { key: ev.key.clone(), ..entry(a.id.seq, at_ms) });
                h.trim(&ev.account, at_ms);
            }
        }
        accepted.iter().map(|a| (a.id.seq, a.duplicate)).collect()
    }

    #[test]
    fn a_key_is_stored_once_per_account_while_its_event_is_retained() {
        let mut h = History::new(1, 0, &bounds(3));
        let plain = NewEvent { key: None, ..keyed("a", "-") };
        let first = publish(&mut h, &[keyed("a", "k"), keyed("a", "k"), keyed("b", "k"), plain.clone(), plain.clone()], 0);
        assert_eq!(first, vec![(1, false), (1, true), (2, false), (3, false), (4, false)], "a repeat in one batch gets the first id; keys are per account; no key, never a duplicate");
        assert_eq!(publish(&mut h, &[keyed("a", "k")], 0), vec![(1, true)], "a later publish of the same key");
        assert_eq!(publish(&mut h, &[plain], 0), vec![(5, false)], "a duplicate takes no seq");
        // Event 1 is trimmed by count now (a holds 3, 4, 5): its key is new again.
        assert_eq!(publish(&mut h, &[keyed("a", "k"), keyed("a", "k")], 0), vec![(6, false), (6, true)]);
        assert_eq!(h.keys.get("a", "k"), Some(6));
    }

    #[test]
    fn a_key_whose_event_aged_out_is_new_before_and_after_the_tick() {
        let mut h = History::new(1, 0, &bounds(100));
        assert_eq!(publish(&mut h, &[keyed("a", "k")], 0), vec![(1, false)]);
        assert_eq!(publish(&mut h, &[keyed("a", "k")], HOUR_MS - 1), vec![(1, true)]);
        assert_eq!(publish(&mut h, &[keyed("a", "k")], HOUR_MS + 1), vec![(2, false)], "past its age, though not trimmed yet");
        h.trim_all(HOUR_MS * 2 + 2);
        assert_eq!(h.keys.get("a", "k"), None, "the tick forgets the keys of what it trims");
        assert_eq!(publish(&mut h, &[keyed("a", "k")], HOUR_MS * 2 + 2), vec![(3, false)]);
    }

    #[test]
    fn a_replay_holds_only_what_the_viewer_may_see_and_the_budget_counts_only_that() {
        let a: Arc<str> = "a".into();
        let frame_len = entry(1, 0).frame.bytes.len();
        let mut h = History::new(1, 0, &HistoryConfig { replay_max_bytes: frame_len * 2, ..bounds(100) });
        let admins = Some(Arc::new(Audience::new(["role:admin"]).unwrap()));
        for audience in [None, admins.clone(), admins.clone(), admins, None] {
            let id = h.next_id();
            h.push(&a, Entry { audience, ..entry(id.seq, 0) });
        }
        let admin = Viewer::new("ann".into(), "s-1".into(), Arc::new(tidings_protocol::Grants::new(["role:admin"]).unwrap()));
        let open = |v: &Viewer, seq| {
            let o = h.open("a", LastEventId::Id(EventId::new(1, seq)), v, 0);
            (o.decision, o.replay.iter().map(|f| f.seq).collect::<Vec<_>>())
        };
        assert_eq!(open(&anyone(), 0), (ResumeDecision::Replay { after: 0 }, vec![1, 5]), "hidden events leave gaps and cost no budget");
        assert_eq!(open(&anyone(), 1), (ResumeDecision::Replay { after: 1 }, vec![5]));
        assert_eq!(open(&anyone(), 4), (ResumeDecision::Replay { after: 4 }, vec![5]));
        assert_eq!(open(&admin, 3), (ResumeDecision::Replay { after: 3 }, vec![4, 5]));
        assert_eq!(open(&admin, 0).0, ResumeDecision::Resync(ResyncReason::ReplayTooLarge), "five visible frames exceed the budget of two");
    }

    #[test]
    fn epochs_are_never_zero() {
        assert!((0..1_000).all(|_| new_epoch() != 0));
    }
}
