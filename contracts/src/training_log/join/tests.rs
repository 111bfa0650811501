use super::*;
use crate::events::RawFeatures;

const W: i64 = 60_000;
const L: i64 = 30_000;

fn impression(id: &str, time: i64) -> Impression {
    let mut impression = Impression::example(id, RawFeatures::new());
    impression.event_time_ms = time;
    impression
}

fn click(impression_id: &str, time: i64) -> Click {
    Click {
        click_id: format!("c-{impression_id}-{time}"),
        impression_id: impression_id.into(),
        event_time_ms: time,
        user_id: "u-1".into(),
        ad_id: "a-1".into(),
        advertiser_id: "adv-1".into(),
        category: None,
    }
}

#[test]
fn windows_close_on_the_click_watermark() {
    let mut joiner = Joiner::new(3, W, L, Checkpoint::default());
    joiner.impression(0, Some(impression("i-0", 1_000)));
    joiner.impression(1, Some(impression("i-1", 2_000)));
    joiner.click(0, Some(&click("i-0", 5_000)));
    // Inside the window, but its impression is still open: no example yet.
    assert_eq!(joiner.closed(), 0);
    // A click past i-1's window end plus the lateness closes both.
    joiner.click(1, Some(&click("i-1", 2_000 + W + 1)));
    assert_eq!(joiner.closed(), 0, "the watermark is the newest click minus the lateness");
    joiner.click(2, Some(&click("other", 2_000 + W + L + 1)));
    let (examples, checkpoint) = joiner.take_closed();
    let labels: Vec<(&str, u32, bool)> =
        examples.iter().map(|e| (e.impression.impression_id.as_str(), e.clicks, e.label())).collect();
    assert_eq!(labels, [("i-0", 1, true), ("i-1", 0, false)]);
    assert_eq!(examples[0].first_click_ms, Some(5_000));
    assert_eq!(examples[0].partition, 3);
    // i-1's click came after its window: late, counted. "other" waits for its impression.
    assert_eq!(joiner.take_counts(), (1, 0));
    assert_eq!(checkpoint.impressions_resume, 2);
    assert_eq!(checkpoint.clicks_resume, 2, "the unmatched click is still held");
}

#[test]
fn a_click_read_before_its_impression_waits_for_it() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    joiner.click(0, Some(&click("i-0", 3_000)));
    joiner.impression(0, Some(impression("i-0", 1_000)));
    joiner.click(1, Some(&click("x", 1_000 + W + L + 1)));
    let (examples, _) = joiner.take_closed();
    assert_eq!(examples.len(), 1);
    assert!(examples[0].label());
}

#[test]
fn clicks_for_written_impressions_are_late_and_unknown_ones_orphans() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    joiner.impression(0, Some(impression("i-0", 1_000)));
    joiner.click(0, Some(&click("z", 1_000 + W + L + 1)));
    assert_eq!(joiner.take_closed().0.len(), 1);
    joiner.click(1, Some(&click("i-0", 2_000)));
    assert_eq!(joiner.take_counts(), (1, 0));
    // Impressions move past the orphan's time: it can no longer find its impression.
    joiner.impression(1, Some(impression("i-1", 1_000 + W + 2 * L + 10)));
    assert_eq!(joiner.take_counts(), (0, 1), "the click for `z` never found its impression");
}

#[test]
fn invalid_messages_move_the_position() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    joiner.impression(0, None);
    joiner.click(0, None);
    let (_, checkpoint) = joiner.take_closed();
    assert_eq!((checkpoint.impressions_next, checkpoint.clicks_next), (1, 1));
    assert_eq!((checkpoint.impressions_resume, checkpoint.clicks_resume), (1, 1));
}

/// A partition pair as the world publishes it: impressions in time order, each click right
/// after its impression's request, with a delay up to the lateness.
struct Stream {
    impressions: Vec<Impression>,
    clicks: Vec<Click>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn stream(rng: &mut Rng, n: usize) -> Stream {
    let mut impressions = Vec::new();
    let mut clicks = Vec::new();
    for i in 0..n {
        let time = i as i64 * 1_000;
        let id = format!("i-{i}");
        impressions.push(impression(&id, time));
        if rng.below(4) == 0 {
            clicks.push(click(&id, time + rng.below((W + L) as u64) as i64));
        }
    }
    Stream { impressions, clicks }
}

/// Reads the stream with a random interleaving of the two partitions, committing and crashing
/// at random; a crash restarts from the last checkpoint, at or before its replay points.
fn run(stream: &Stream, rng: &mut Rng, crashes: bool) -> Vec<(String, u32)> {
    let mut written = Vec::new();
    let mut checkpoint = Checkpoint::default();
    let mut joiner = Joiner::new(0, W, L, checkpoint.clone());
    let (mut next_impression, mut next_click) = (0usize, 0usize);
    while next_impression < stream.impressions.len() || next_click < stream.clicks.len() {
        let take_impression =
            next_click >= stream.clicks.len() || (next_impression < stream.impressions.len() && rng.below(3) > 0);
        if take_impression {
            joiner.impression(next_impression as i64, Some(stream.impressions[next_impression].clone()));
            next_impression += 1;
        } else {
            joiner.click(next_click as i64, Some(&stream.clicks[next_click]));
            next_click += 1;
        }
        if rng.below(50) == 0 {
            let (examples, ck) = joiner.take_closed();
            written.extend(examples.into_iter().map(|e| (e.impression.impression_id, e.clicks)));
            checkpoint = ck;
        }
        if crashes && rng.below(150) == 0 {
            joiner = Joiner::new(0, W, L, checkpoint.clone());
            // Kafka may restart anywhere at or before the replay points.
            let back = |resume: i64, rng: &mut Rng| resume.saturating_sub(rng.below(3) as i64).max(0) as usize;
            next_impression = back(checkpoint.impressions_resume, rng);
            next_click = back(checkpoint.clicks_resume, rng);
        }
    }
    let (examples, _) = joiner.take_closed();
    written.extend(examples.into_iter().map(|e| (e.impression.impression_id, e.clicks)));
    written.sort();
    written
}

#[test]
fn crashes_and_interleavings_change_no_example() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..20 {
        let stream = stream(&mut rng, 600);
        let clean = run(&stream, &mut rng, false);
        assert!(clean.len() > 400, "most windows close by the end ({} of 600)", clean.len());
        let mut ids: Vec<&String> = clean.iter().map(|(id, _)| id).collect();
        ids.dedup();
        assert_eq!(ids.len(), clean.len(), "no impression is written twice");
        let crashed = run(&stream, &mut rng, true);
        assert_eq!(crashed, clean, "round {round}: a crashed run writes exactly the clean run's examples");
    }
}

#[test]
fn a_second_impression_with_a_known_id_is_refused_not_mislabelled() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    assert!(joiner.impression(0, Some(impression("i-0", 1_000))).is_none());
    // The same id again, waiting or written: one of the two would take the other's click.
    assert!(joiner.impression(1, Some(impression("i-0", 2_000))).is_some(), "refused while the first waits");
    joiner.click(0, Some(&click("i-0", 3_000)));
    joiner.click(1, Some(&click("x", 2_000 + W + L + 1)));
    let (examples, checkpoint) = joiner.take_closed();
    assert_eq!(examples.len(), 1, "only the first is logged");
    assert_eq!((examples[0].offset, examples[0].clicks), (0, 1));
    assert!(joiner.impression(2, Some(impression("i-0", 4_000))).is_some(), "refused while a click can name it");
    assert_eq!(checkpoint.impressions_resume, 2, "the refused one is not waited for");
    // Read again (a replay), the first is accounted for and the refusal stands.
    let mut replay = Joiner::new(0, W, L, Checkpoint::default());
    assert!(replay.impression(0, Some(impression("i-0", 1_000))).is_none());
    assert!(replay.impression(1, Some(impression("i-0", 2_000))).is_some());
}

/// A client's retry: the same click id again, read later.
fn retry(of: &Click, time: i64) -> Click {
    Click { event_time_ms: time, ..of.clone() }
}

#[test]
fn a_retried_click_counts_once_whether_read_before_or_after_its_impression() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    let early = click("i-0", 3_000);
    joiner.click(0, Some(&early));
    joiner.click(1, Some(&retry(&early, 3_100)));
    joiner.impression(0, Some(impression("i-0", 1_000)));
    joiner.impression(1, Some(impression("i-1", 1_000)));
    let after = click("i-1", 4_000);
    joiner.click(2, Some(&after));
    joiner.click(3, Some(&retry(&after, 4_200)));
    // A second, distinct click on i-1 still counts.
    joiner.click(4, Some(&click("i-1", 5_000)));
    joiner.click(5, Some(&click("x", 1_000 + W + L + 1)));
    let (examples, _) = joiner.take_closed();
    let clicks: Vec<u32> = examples.iter().map(|e| e.clicks).collect();
    assert_eq!(clicks, [1, 2]);
    assert_eq!(joiner.take_counts(), (0, 0), "a retry is neither late nor an orphan");
}

#[test]
fn a_retried_click_counts_once_across_a_restart() {
    let mut joiner = Joiner::new(0, W, L, Checkpoint::default());
    joiner.impression(0, Some(impression("i-0", 1_000)));
    let first = click("i-0", 3_000);
    joiner.click(0, Some(&first));
    joiner.impression(1, Some(impression("i-1", 2_000)));
    // Committed while i-0 waits: the checkpoint replays from its first click.
    let (_, checkpoint) = joiner.take_closed();
    assert_eq!(checkpoint.clicks_resume, 0);
    let mut restarted = Joiner::new(0, W, L, checkpoint);
    restarted.impression(0, Some(impression("i-0", 1_000)));
    restarted.impression(1, Some(impression("i-1", 2_000)));
    restarted.click(0, Some(&first));
    restarted.click(1, Some(&retry(&first, 3_500)));
    restarted.click(2, Some(&click("x", 2_000 + W + L + 1)));
    let (examples, _) = restarted.take_closed();
    let clicks: Vec<u32> = examples.iter().map(|e| e.clicks).collect();
    assert_eq!(clicks, [1, 0]);
}
