//! The partition state machine against a fake writer: a Redis that applies batches in the order
//! they were sent, fencing those whose expected watermark is not the stored one, and counts how
//! often each offset took effect.

use std::collections::VecDeque;

use super::*;

const KEY: Key = (Kind::Impressions, 0);

/// A sent batch: who sent it, what it expects, the offsets folded into it.
struct Queued {
    member: usize,
    sent: Send,
    offsets: Vec<i64>,
}

/// One partition's watermark and effects, as apply.lua keeps them.
#[derive(Default)]
struct FakeRedis {
    watermark: Option<i64>,
    effects: BTreeMap<i64, u32>,
    /// Sent, not yet run: Redis runs one connection's scripts in order.
    queue: VecDeque<Queued>,
}

impl FakeRedis {
    /// Runs the oldest script; returns who sent it and its outcome.
    fn run_one(&mut self) -> Option<(usize, Send, Outcome)> {
        let Queued { member, sent, offsets } = self.queue.pop_front()?;
        if self.watermark != sent.expected {
            return Some((member, sent, Outcome::Fenced { current: self.watermark }));
        }
        for offset in offsets {
            *self.effects.entry(offset).or_default() += 1;
        }
        self.watermark = Some(sent.next);
        Some((member, sent, Outcome::Applied))
    }
}

/// An ingester member, reduced to its progress and the consumer's position.
#[derive(Default)]
struct Member {
    progress: Progress,
    position: i64,
    /// Outcomes Redis returned, not yet settled, in send order.
    outcomes: VecDeque<(Send, Outcome)>,
    /// Batches sent, outcome not yet returned.
    in_flight: usize,
}

struct World {
    redis: FakeRedis,
    members: Vec<Member>,
    /// Offsets 0..end exist in the partition.
    end: i64,
    /// New offsets per batch a round sends (the ingester's records per script call).
    chunk: usize,
}

impl World {
    fn new(members: usize, end: i64) -> Self {
        let members = (0..members).map(|_| Member::default()).collect();
        Self { redis: FakeRedis::default(), members, end, chunk: usize::MAX }
    }

    /// Runs scripts until member `m`'s oldest batch has returned.
    fn await_oldest(&mut self, m: usize) {
        while self.members[m].outcomes.is_empty() && self.members[m].in_flight > 0 {
            let (member, sent, outcome) = self.redis.run_one().expect("a batch in flight is queued");
            self.members[member].in_flight -= 1;
            self.members[member].outcomes.push_back((sent, outcome));
        }
    }

    /// Settles member `m`'s batches until at most `keep` are outstanding.
    fn settle(&mut self, m: usize, keep: usize) {
        while self.members[m].in_flight + self.members[m].outcomes.len() > keep {
            self.await_oldest(m);
            let member = &mut self.members[m];
            let (sent, outcome) = member.outcomes.pop_front().expect("awaited");
            member.progress.settle(KEY, sent, &outcome);
        }
    }

    /// One round of member `m`, as `Ingester::round` orders it: load, read up to `take`
    /// messages, settle all but `keep` batches, send the round's batch.
    fn round(&mut self, m: usize, take: i64, keep: usize) {
        let end = self.end;
        let member = &mut self.members[m];
        let read: Vec<i64> = (member.position..end.min(member.position + take)).collect();
        member.position += read.len() as i64;
        let mut sought = false;
        for (key, first) in member.progress.to_load(read.iter().map(|&o| (KEY, o))) {
            // The watermark is read now: batches still queued have not run.
            if let Some(seek) = member.progress.loaded(key, self.redis.watermark, None, first) {
                member.position = seek.unwrap_or(0);
                sought = true;
            }
        }
        // As the round builds a share for a partition only when it read something of it.
        let (mut folded, mut touched) = (Vec::new(), false);
        if !sought {
            for offset in read {
                match member.progress.read(KEY, offset) {
                    Read::Skip => {}
                    Read::Held => touched = true,
                    Read::New => {
                        touched = true;
                        folded.push(offset);
                    }
                }
            }
        }
        self.settle(m, keep);
        if !touched {
            return;
        }
        // The round's batches, `chunk` new offsets each, every one but the last ending where
        // the next starts.
        let chunks: Vec<&[i64]> = if folded.is_empty() { vec![&[]] } else { folded.chunks(self.chunk).collect() };
        for (i, offsets) in chunks.iter().enumerate() {
            let until = chunks.get(i + 1).map(|next| next[0]);
            let member = &mut self.members[m];
            match member.progress.send(KEY, until) {
                Some(sent) => {
                    member.in_flight += 1;
                    self.redis.queue.push_back(Queued { member: m, sent, offsets: offsets.to_vec() });
                }
                None => assert!(
                    offsets.is_empty() || member.progress.states.get(&KEY) == Some(&State::Loading),
                    "a live partition's new reads were dropped: {offsets:?}"
                ),
            }
        }
    }

    fn assert_at_most_once(&self) {
        for (offset, &count) in &self.redis.effects {
            assert!(count <= 1, "offset {offset} took effect {count} times");
        }
    }

    /// Member `m` alone until everything is applied and settled; then every offset took effect
    /// exactly once.
    fn drain(&mut self, m: usize) {
        for _ in 0..1_000 {
            if self.redis.watermark == Some(self.end) && self.members.iter().all(|x| x.in_flight == 0) {
                break;
            }
            self.round(m, 64, 0);
            self.settle(m, 0);
            while self.redis.run_one().is_some() {} // others' leftovers
            for member in &mut self.members {
                member.in_flight = 0;
            }
        }
        self.assert_at_most_once();
        let missing: Vec<i64> = (0..self.end).filter(|o| !self.redis.effects.contains_key(o)).collect();
        assert!(missing.is_empty(), "offsets never applied: {missing:?}");
    }
}

/// The interleaving review suspected (defect 7): a batch of the first load lands after the
/// second load read the watermark, and its outcome arrives while the second load's round has
/// already folded events against the lower watermark.
#[test]
fn an_earlier_loads_outcome_does_not_let_a_batch_pass_the_fence() {
    let mut world = World::new(1, 300);
    world.round(0, 100, 1); // load 1 at nothing; 0..100 sent
    world.round(0, 100, 1); // 100..200 sent behind it: two in flight
    assert_eq!(world.members[0].in_flight, 2);
    // Another member's log commit, say: the pair is forgotten while both are in flight.
    world.members[0].progress.forget(KEY);
    // Load 2 reads the watermark before either batch ran: nothing; it seeks to the start.
    world.round(0, 100, 2);
    assert_eq!(world.members[0].position, 0);
    // It reads 0..250 new against no watermark; meanwhile both old batches land (settled as
    // stale); then it sends 0..250 expecting no watermark, and is fenced.
    world.round(0, 250, 0);
    world.settle(0, 0);
    world.assert_at_most_once();
    assert_eq!(world.members[0].progress.states.get(&KEY), Some(&State::Loading));
    // Loaded again, it goes on from what Redis holds.
    world.drain(0);
}

#[test]
fn a_fence_reloads_from_what_another_member_applied() {
    let mut world = World::new(2, 200);
    world.round(0, 50, 1);
    world.round(0, 50, 1);
    world.settle(0, 0);
    // Member 1 takes the partition over (member 0 not yet told) and applies up to 120.
    world.round(1, 120, 0);
    world.round(1, 0, 0);
    world.settle(1, 0);
    assert_eq!(world.redis.watermark, Some(120));
    // Member 0's next batch is fenced; loaded again, it starts at 120.
    world.round(0, 50, 0);
    world.settle(0, 0);
    assert_eq!(world.members[0].progress.states.get(&KEY), Some(&State::Loading));
    world.round(0, 10, 0);
    assert_eq!(world.members[0].position, 120);
    world.drain(0);
}

/// A small deterministic generator: the interleavings are reproducible from the seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Two members, rounds of random sizes, cut into batches of random sizes, random queue depths,
/// forgets (log conflicts) and batches landing late, in random order: no offset ever takes effect twice, and once one member runs
/// alone, every offset takes effect exactly once.
#[test]
fn random_interleavings_apply_every_event_exactly_once() {
    for seed in 0..2_000 {
        let mut rng = Lcg(seed);
        let mut world = World::new(2, 400);
        world.chunk = 1 + rng.below(60) as usize;
        for _ in 0..40 {
            let m = rng.below(2) as usize;
            match rng.below(6) {
                0 => world.members[m].progress.forget(KEY),
                1 => {
                    // Redis runs some of what is queued; outcomes wait to be settled.
                    for _ in 0..rng.below(3) {
                        if let Some((member, sent, outcome)) = world.redis.run_one() {
                            world.members[member].in_flight -= 1;
                            world.members[member].outcomes.push_back((sent, outcome));
                        }
                    }
                }
                _ => {
                    let (take, keep) = (rng.below(80) as i64, rng.below(3) as usize);
                    world.round(m, take, keep);
                }
            }
            world.assert_at_most_once();
        }
        world.drain(rng.below(2) as usize);
    }
}

#[test]
fn offsets_to_commit_are_the_lower_of_redis_and_the_log() {
    let mut progress = Progress::default();
    assert_eq!(progress.loaded(KEY, Some(50), Some(30), Some(50)), Some(Some(30)));
    let clicks = (Kind::Clicks, 0);
    assert_eq!(progress.loaded(clicks, Some(10), None, Some(10)), None);
    let mut offsets = progress.offsets_to_commit(|key| (key == KEY).then_some(30));
    offsets.sort();
    assert_eq!(offsets, [(KEY, 30), (clicks, 10)]);
    progress.committed(KEY, 30);
    assert_eq!(progress.offsets_to_commit(|key| (key == KEY).then_some(30)), [(clicks, 10)]);
    // A partition loading or taken away commits nothing.
    progress.forget(clicks);
    progress.revoke(KEY);
    assert!(progress.offsets_to_commit(|_| None).is_empty());
    assert!(progress.loading());
}
