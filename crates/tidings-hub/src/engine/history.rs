//! The retained-history window, in memory: per account, the events a resuming stream can
//! still be replayed and how far the account was trimmed, under the `[history]` bounds.
//!
//! The memory engine keeps its whole history here; the durable engine keeps here a copy of
//! what its data file retains, so that opening a stream never reads the disk. Both answer
//! [`History::open`], so the rules of the window (trimming by count, age and bytes, what
//! counts as trimmed, forgetting idle accounts, the replay budget) are written once. The same
//! goes for idempotency keys: which events of a publish are duplicates is [`History::admit`],
//! and a key is forgotten with its event (the key index itself is [`super::idempotency`]).
//! The Redis engine keeps its window inside Redis (and the key rule inside its publish
//! script) but shares [`new_epoch`] and [`now_ms`] from here.
//!
//! What it does not do: assign ids durably, talk to a store, or deliver to the fan-out. The
//! engine that owns a `History` does those, under the same lock, which is what keeps the
//! replay/live boundary exact.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tidings_protocol::{Audience, EventId, Viewer};
use tidings_protocol::resume::{HistoryWindow, LastEventId, decide};

use super::idempotency::KeyMemory;
use super::{Accepted, NewEvent, Opening, Retained, StoredFrame};
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

/// Buckets of the floor that stands in for forgotten accounts (see [`History::forget_idle`]):
/// 32 KiB per history, whatever the number of accounts ever seen.
pub const FLOOR_BUCKETS: usize = 4_096;

/// The floor bucket of an account: a hash of its name that stays the same across restarts
/// (the durable engine stores the floors) and is written the same in the Redis scripts.
pub fn floor_bucket(account: &str) -> usize {
    account.bytes().fold(0, |h, b| (h * 31 + usize::from(b)) % FLOOR_BUCKETS)
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

/// One incoming event as trimming sees it: `(seq, at_ms, encoded bytes)`.
type Incoming = (u64, u64, usize);

/// The events of one account still retained, oldest first.
#[derive(Debug, Default)]
struct AccountLog {
    entries: VecDeque<Entry>,
    /// Every event of this account with a seq at or below this may have been dropped. An
    /// empty log keeps this: it is what proves a gap later.
    trimmed_through: u64,
    /// Encoded bytes of `entries`.
    bytes: usize,
}

impl AccountLog {
    fn front(&self) -> Option<u64> {
        self.entries.front().map(|e| e.frame.seq)
    }

    /// Where a trim must cut (the new `trimmed_through`) once `incoming` are appended, so
    /// that at most `max_events` and `max_bytes` remain and none stored before `oldest_ms`;
    /// `None` if nothing goes.
    fn cut(&self, incoming: &[Incoming], bounds: &HistoryConfig, oldest_ms: u64) -> Option<u64> {
        let held = self.entries.iter().map(|e| (e.frame.seq, e.at_ms, e.frame.bytes.len()));
        let all = || held.clone().chain(incoming.iter().copied());
        let total = self.entries.len() + incoming.len();
        let by_count = total.checked_sub(bounds.max_events + 1).and_then(|k| all().nth(k)).map(|(seq, ..)| seq);
        let by_age = all().take_while(|(_, at, _)| *at < oldest_ms).last().map(|(seq, ..)| seq);
        let mut excess = (self.bytes + incoming.iter().map(|(.., len)| len).sum::<usize>()).saturating_sub(bounds.max_bytes);
        let by_bytes = (excess > 0)
            .then(|| {
                all().find(|(.., len)| {
                    excess = excess.saturating_sub(*len);
                    excess == 0
                })
            })
            .flatten()
            .map(|(seq, ..)| seq);
        by_count.max(by_age).max(by_bytes).filter(|&cut| cut > self.trimmed_through)
    }

    /// Drops every event at or below `through` and records it as trimmed.
    fn apply_cut(&mut self, through: u64) {
        while self.entries.front().is_some_and(|e| e.frame.seq <= through) {
            let e = self.entries.pop_front().expect("checked");
            self.bytes -= e.frame.bytes.len();
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
///
/// Bounded by what is retained, not by every account ever seen: an account whose log is
/// empty and that no stream holds is forgotten ([`History::forget_idle`]). What proves a gap
/// for it afterwards is its bucket's **floor**, the highest `trimmed_through` of the accounts
/// forgotten in that bucket: an account not in the map (forgotten, or never seen) counts as
/// trimmed through its floor, and an account seen again starts from it. A resume from below
/// the floor therefore gets `resync` `history_trimmed`, never a silent gap; the price is a
/// resync a forgotten account's client could sometimes have been spared.
#[derive(Debug)]
pub struct History {
    epoch: u64,
    /// The highest seq assigned in this history, across accounts.
    head: u64,
    bounds: HistoryConfig,
    accounts: HashMap<Arc<str>, AccountLog>,
    /// Encoded bytes retained across accounts (`history.node_max_bytes` bounds it).
    bytes: usize,
    /// `(oldest retained seq, account)` of every account with events: the node's oldest event
    /// is the first, which is where trimming by `node_max_bytes` starts.
    fronts: BTreeSet<(u64, Arc<str>)>,
    /// Per [`floor_bucket`], the highest `trimmed_through` of an account forgotten there.
    floors: Box<[u64]>,
    /// The keys of the retained events; a cut forgets the keys of the events it drops.
    keys: KeyMemory,
}

impl History {
    /// An empty window of history `epoch` whose last assigned seq is `head`.
    pub fn new(epoch: u64, head: u64, bounds: &HistoryConfig) -> Self {
        Self {
            epoch,
            head,
            bounds: bounds.clone(),
            accounts: HashMap::new(),
            bytes: 0,
            fronts: BTreeSet::new(),
            floors: vec![0; FLOOR_BUCKETS].into_boxed_slice(),
            keys: KeyMemory::default(),
        }
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

    /// Changes one account's log (created, from its floor, when missing) and keeps the node's
    /// byte count and oldest-event index in step.
    fn update<R>(&mut self, account: &Arc<str>, change: impl FnOnce(&mut AccountLog) -> R) -> R {
        let floor = self.floors[floor_bucket(account)];
        let log = self.accounts.entry(account.clone()).or_insert_with(|| AccountLog { trimmed_through: floor, ..AccountLog::default() });
        let (front, bytes) = (log.front(), log.bytes);
        let r = change(log);
        let (new_front, new_bytes) = (log.front(), log.bytes);
        self.bytes = self.bytes - bytes + new_bytes;
        if front != new_front {
            if let Some(seq) = front {
                self.fronts.remove(&(seq, account.clone()));
            }
            if let Some(seq) = new_front {
                self.fronts.insert((seq, account.clone()));
            }
        }
        r
    }

    /// Appends an event to its account's log (and its key to the account's keys); seqs of
    /// one account must increase.
    pub fn push(&mut self, account: &Arc<str>, entry: Entry) {
        if let Some(key) = &entry.key {
            self.keys.insert(account, key, entry.frame.seq);
        }
        self.update(account, |log| {
            debug_assert!(log.entries.back().is_none_or(|last| last.frame.seq < entry.frame.seq));
            log.bytes += entry.frame.bytes.len();
            log.entries.push_back(entry);
        });
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
        self.update(account, |log| log.trimmed_through = log.trimmed_through.max(through));
    }

    /// Records a floor stored before this window was loaded.
    pub fn restore_floor(&mut self, bucket: usize, through: u64) {
        if let Some(floor) = self.floors.get_mut(bucket) {
            *floor = (*floor).max(through);
        }
    }

    /// The cuts that appending `incoming` (`(account, seq, encoded bytes)`, stored at
    /// `at_ms`) will require by the per-account bounds, one `(account, trimmed_through)` per
    /// account touched that must be trimmed. Nothing changes until [`History::apply_cut`]: a
    /// store commits the cuts first.
    pub fn cuts_after<'a>(&self, incoming: impl IntoIterator<Item = (&'a Arc<str>, u64, usize)>, at_ms: u64) -> Vec<(Arc<str>, u64)> {
        let oldest = oldest_kept_ms(at_ms, self.bounds.max_age);
        let mut by_account: HashMap<&Arc<str>, Vec<Incoming>> = HashMap::new();
        for (account, seq, len) in incoming {
            by_account.entry(account).or_default().push((seq, at_ms, len));
        }
        let empty = AccountLog::default();
        by_account
            .into_iter()
            .filter_map(|(account, new)| {
                let log = self.accounts.get(account).unwrap_or(&empty);
                log.cut(&new, &self.bounds, oldest).map(|cut| (account.clone(), cut))
            })
            .collect()
    }

    /// Every cut due now by the per-account bounds (count, age, bytes), across all accounts
    /// (periodic upkeep). Nothing changes until [`History::apply_cut`].
    pub fn cuts_due(&self, now_ms: u64) -> Vec<(Arc<str>, u64)> {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        self.accounts.iter().filter_map(|(a, log)| log.cut(&[], &self.bounds, oldest).map(|c| (a.clone(), c))).collect()
    }

    /// Drops every event of `account` at or below `through`, and forgets their keys.
    pub fn apply_cut(&mut self, account: &Arc<str>, through: u64) {
        self.update(account, |log| log.apply_cut(through));
        self.keys.forget_through(account, through);
    }

    /// Trims one account by its bounds at once (a history that needs no store to agree).
    pub fn trim(&mut self, account: &Arc<str>, now_ms: u64) {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        let Some(cut) = self.accounts.get(account).and_then(|log| log.cut(&[], &self.bounds, oldest)) else { return };
        self.apply_cut(account, cut);
    }

    /// Trims every account by its bounds at once.
    pub fn trim_all(&mut self, now_ms: u64) {
        for (account, through) in self.cuts_due(now_ms) {
            self.apply_cut(&account, through);
        }
    }

    /// Drops the node's oldest events, whatever their account, until what is retained fits
    /// `history.node_max_bytes`; returns the cuts made (a store applies the same afterwards:
    /// a window trimmed further than its store only answers `resync` sooner).
    pub fn trim_node(&mut self) -> Vec<(Arc<str>, u64)> {
        let mut cuts = Vec::new();
        while self.bytes > self.bounds.node_max_bytes {
            let mut oldest = self.fronts.iter();
            let Some((_, account)) = oldest.next() else { break };
            let account = account.clone();
            let next_front = oldest.next().map_or(u64::MAX, |(seq, _)| *seq);
            let mut excess = self.bytes - self.bounds.node_max_bytes;
            let mut through = 0;
            // This account's events older than every other account's oldest, as many as the
            // excess needs (its first is the node's oldest, so at least one goes).
            for e in &self.accounts[&account].entries {
                if e.frame.seq > next_front {
                    break;
                }
                through = e.frame.seq;
                excess = excess.saturating_sub(e.frame.bytes.len());
                if excess == 0 {
                    break;
                }
            }
            self.apply_cut(&account, through);
            cuts.push((account, through));
        }
        cuts
    }

    /// The accounts [`History::forget_idle`] would forget, each with its `trimmed_through`
    /// (a store records the same before the window forgets them): those with no retained
    /// event that `live` (the accounts with streams on the node) does not claim.
    pub fn forgettable(&self, live: impl Fn(&str) -> bool) -> Vec<(Arc<str>, u64)> {
        self.accounts.iter().filter(|(a, log)| log.entries.is_empty() && !live(a)).map(|(a, log)| (a.clone(), log.trimmed_through)).collect()
    }

    /// Forgets `account` if it has no retained event, raising its bucket's floor to its
    /// `trimmed_through`.
    pub fn forget(&mut self, account: &Arc<str>) {
        if self.accounts.get(account).is_some_and(|log| log.entries.is_empty()) {
            let log = self.accounts.remove(account).expect("checked");
            let floor = &mut self.floors[floor_bucket(account)];
            *floor = (*floor).max(log.trimmed_through);
        }
    }

    /// Forgets every account with no retained event and no stream (`live` says which have
    /// one), so memory follows what is retained and live, not every account ever seen.
    /// Returns how many were forgotten.
    pub fn forget_idle(&mut self, live: impl Fn(&str) -> bool) -> usize {
        let idle = self.forgettable(live);
        for (account, _) in &idle {
            self.forget(account);
        }
        self.shrink();
        idle.len()
    }

    /// Gives back the map's room once most of it is empty (a map keeps its capacity).
    pub fn shrink(&mut self) {
        if self.accounts.capacity() > 4 * self.accounts.len().max(1_024) {
            self.accounts.shrink_to_fit();
        }
    }

    /// The floor of `account`'s bucket.
    pub fn floor(&self, account: &str) -> u64 {
        self.floors[floor_bucket(account)]
    }

    /// Events retained across all accounts.
    pub fn retained_events(&self) -> usize {
        self.accounts.values().map(|l| l.entries.len()).sum()
    }

    /// Encoded bytes retained across all accounts.
    pub fn retained_bytes(&self) -> usize {
        self.bytes
    }

    /// Accounts the window holds (with events, with a stream, or not yet forgotten).
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// Accounts, events and bytes held.
    pub fn retained(&self) -> Retained {
        Retained { accounts: self.accounts(), events: self.retained_events(), bytes: self.bytes }
    }

    /// How a stream of `account` starts from `last_event_id`, as of `now_ms`: the decision,
    /// and for a replay every retained event after the client's id that `viewer` may see,
    /// within the replay budget (which counts only those).
    pub fn open(&self, account: &str, last_event_id: LastEventId, viewer: &Viewer, now_ms: u64) -> Opening {
        let oldest = oldest_kept_ms(now_ms, self.bounds.max_age);
        let log = self.accounts.get(account);
        let trimmed_through = log.map_or_else(|| self.floor(account), |l| l.trimmed_through_at(oldest));
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

    /// An event of exactly `len` encoded bytes.
    fn sized(seq: u64, at_ms: u64, len: usize) -> Entry {
        Entry { at_ms, frame: StoredFrame { seq, bytes: Bytes::from(vec![b'x'; len]) }, key: None, audience: None }
    }

    /// Publishes one event of `len` bytes to `account` as the memory engine does.
    fn publish_sized(h: &mut History, account: &Arc<str>, len: usize, at_ms: u64) -> u64 {
        let id = h.next_id();
        h.push(account, sized(id.seq, at_ms, len));
        h.trim(account, at_ms);
        h.trim_node();
        id.seq
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
            let e = entry(seq, seq * 10);
            log.bytes += e.frame.bytes.len();
            log.entries.push_back(e);
        }
        assert_eq!(log.cut(&[], &bounds(4), 0), None);
        assert_eq!(log.cut(&[(5, 50, 1)], &bounds(4), 0), Some(1));
        assert_eq!(log.cut(&[(5, 50, 1), (6, 60, 1)], &bounds(1), 0), Some(5));
        assert_eq!(log.cut(&[], &bounds(10), 25), Some(2), "events older than the cut-off go");
        log.apply_cut(2);
        assert_eq!((log.trimmed_through, log.entries.len()), (2, 2));
        assert_eq!(log.cut(&[], &bounds(10), 25), None, "nothing below trimmed_through is cut again");
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
        let cuts = h.cuts_after([(&a, 3, 10), (&b, 4, 10)], 0);
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
    fn an_account_over_its_byte_budget_loses_its_oldest_events() {
        let a: Arc<str> = "a".into();
        let mut h = History::new(1, 0, &HistoryConfig { max_bytes: 250, ..bounds(100) });
        let seqs: Vec<u64> = (0..4).map(|_| publish_sized(&mut h, &a, 100, 0)).collect();
        assert_eq!((h.retained_events(), h.retained_bytes()), (2, 200), "two of 100 bytes fit in 250");
        assert_eq!(resume(&h, "a", seqs[0], 0).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed), "a resume from before the cut");
        assert_eq!(resume(&h, "a", seqs[1], 0), (ResumeDecision::Replay { after: seqs[1] }, vec![seqs[2], seqs[3]]));
        let big = publish_sized(&mut h, &a, 300, 0);
        assert_eq!(h.retained_bytes(), 0, "an event larger than the budget is not retained");
        assert_eq!(resume(&h, "a", big - 1, 0).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "a", big, 0), (ResumeDecision::Replay { after: big }, vec![]));
    }

    #[test]
    fn the_node_byte_budget_trims_the_oldest_events_of_any_account() {
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut h = History::new(1, 0, &HistoryConfig { node_max_bytes: 500, ..bounds(100) });
        let a1 = publish_sized(&mut h, &a, 100, 0);
        let b1 = publish_sized(&mut h, &b, 100, 0);
        let a2 = publish_sized(&mut h, &a, 100, 0);
        let c1 = publish_sized(&mut h, &c, 100, 0);
        let b2 = publish_sized(&mut h, &b, 100, 0);
        assert_eq!(h.retained_bytes(), 500, "at the budget, nothing goes");
        let c2 = publish_sized(&mut h, &c, 150, 0);
        assert_eq!(h.retained_bytes(), 450, "the two oldest (a1, b1) went to make room for 150 more");
        assert_eq!(resume(&h, "a", a1, 0), (ResumeDecision::Replay { after: a1 }, vec![a2]), "a1 went, but its client saw it");
        assert_eq!(resume(&h, "a", a1 - 1, 0).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "b", b1, 0), (ResumeDecision::Replay { after: b1 }, vec![b2]));
        assert_eq!(resume(&h, "b", b1 - 1, 0).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "c", c1 - 1, 0), (ResumeDecision::Replay { after: c1 - 1 }, vec![c1, c2]), "c is untouched");
        publish_sized(&mut h, &c, 500, 0);
        assert_eq!(h.retained_bytes(), 500, "everything older goes for an event of the whole budget");
        assert_eq!(h.fronts.len(), 1, "only accounts with events are indexed");
    }

    #[test]
    fn an_idle_account_is_forgotten_and_an_old_position_still_resyncs() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut h = History::new(1, 0, &bounds(100));
        let a1 = publish_sized(&mut h, &a, 10, 0);
        let a2 = publish_sized(&mut h, &a, 10, 0);
        let b1 = publish_sized(&mut h, &b, 10, 0);
        assert_eq!(h.forget_idle(|_| false), 0, "accounts with events are kept");
        h.trim_all(HOUR_MS + 1);
        assert_eq!(h.forget_idle(|acc| acc == "b"), 1, "b has a stream open, a is forgotten");
        assert_eq!(h.accounts(), 1);
        assert_eq!(resume(&h, "a", a1, HOUR_MS + 1).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed), "never a silent gap");
        assert_eq!(resume(&h, "a", a2, HOUR_MS + 1), (ResumeDecision::Replay { after: a2 }, vec![]), "its client saw everything");
        assert_eq!(resume(&h, "b", b1, HOUR_MS + 1), (ResumeDecision::Replay { after: b1 }, vec![]));
        // Seen again, the account starts from the floor: the events it lost stay lost.
        let a3 = publish_sized(&mut h, &a, 10, HOUR_MS + 2);
        assert_eq!(resume(&h, "a", a1, HOUR_MS + 2).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed));
        assert_eq!(resume(&h, "a", a2, HOUR_MS + 2), (ResumeDecision::Replay { after: a2 }, vec![a3]));
    }

    #[test]
    fn forgetting_many_accounts_gives_their_room_back() {
        let mut h = History::new(1, 0, &bounds(100));
        let accounts: Vec<Arc<str>> = (0..20_000).map(|i| Arc::from(format!("acct-{i}"))).collect();
        let firsts: Vec<u64> = accounts.iter().map(|a| publish_sized(&mut h, a, 10, 0)).collect();
        let _seconds: Vec<u64> = accounts.iter().map(|a| publish_sized(&mut h, a, 10, 0)).collect();
        let full = h.accounts.capacity();
        h.trim_all(HOUR_MS + 1);
        assert_eq!(h.forget_idle(|_| false), accounts.len());
        assert_eq!((h.accounts(), h.retained_bytes(), h.fronts.len()), (0, 0, 0));
        assert!(h.accounts.capacity() < full / 4, "capacity {} of {full}", h.accounts.capacity());
        for (a, first) in accounts.iter().zip(&firsts) {
            assert_eq!(resume(&h, a, *first, HOUR_MS + 1).0, ResumeDecision::Resync(ResyncReason::HistoryTrimmed), "account {a}");
        }
    }

    #[test]
    fn floor_buckets_are_stable_and_spread() {
        assert_eq!(floor_bucket(""), 0);
        assert_eq!(floor_bucket("a"), 97);
        assert_eq!(floor_bucket("ab"), (97 * 31 + 98) % FLOOR_BUCKETS);
        let used: std::collections::HashSet<usize> = (0..FLOOR_BUCKETS).map(|i| floor_bucket(&format!("account-{i}"))).collect();
        assert!(used.len() > FLOOR_BUCKETS / 2, "{} buckets used", used.len());
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
